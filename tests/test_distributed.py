"""Training on several processes through torchrun (gloo on the CPU): two processes train as
one process with the same global batch, only rank 0 writes the run folder, a killed run
resumes exactly, the class-balancing samplers are sharded between the ranks, and PatchCore /
PaDiM fit sharded to the model of one process."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from defectkit.data.synthetic import make_mask_set
from defectkit.engine import distributed
from defectkit.engine.train import load_checkpoint


def _torchrun_command(processes: int, args: list[str]) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*command, f"--nproc_per_node={processes}", "-m", "defectkit", "train", *args]


def _torchrun(processes: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        _torchrun_command(processes, args), cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _sets(*pairs: str) -> list[str]:
    return [part for pair in pairs for part in ("--set", pair)]


def _history(run_dir: Path) -> list[dict[str, float]]:
    return [
        {k: float(v) for k, v in row.items()}
        for row in csv.DictReader(open(run_dir / "history.csv"))
    ]


@pytest.mark.numerics
def test_two_processes_train_as_one_with_the_same_global_batch(synthetic_root, tmp_path):
    """The head trained on frozen features (no batch norm, no dropout) over one batch of the
    whole training set per epoch: two ranks of 16 average to the gradient of one batch of
    32, so the runs agree up to float rounding (Adam's first steps amplify it: 2% allowed)."""
    common = _sets(
        f"data.root={synthetic_root}",
        "data.image_size=64",
        "train.epochs=3",
        "train.threads=1",
        "train.strategy=frozen",
        "model.drop_rate=0",
        "split.val_fraction=0.15",
        f"out_dir={tmp_path}",
    )
    _torchrun(2, [*common, *_sets("train.batch_size=16", "name=two")], tmp_path)
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "defectkit",
            "train",
            *common,
            *_sets("train.batch_size=32", "name=one"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two, single = _history(tmp_path / "two"), _history(tmp_path / "one")
    assert len(two) == len(single) == 3
    for a, b in zip(two, single, strict=True):
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=2e-2, abs=1e-6), key
    metrics = [json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("two", "one")]
    assert metrics[0]["accuracy"] == metrics[1]["accuracy"]
    # only rank 0 wrote: one TensorBoard writer, one set of run files
    assert len(list((tmp_path / "two" / "tensorboard").iterdir())) == 1
    assert (tmp_path / "two" / "bundle" / "bundle.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


@pytest.mark.numerics
def test_a_killed_two_process_run_resumes_to_the_uninterrupted_history(synthetic_root, tmp_path):
    """Stopped by SIGTERM to torchrun (what a scheduler sends a preempted job; torchrun
    terminates both workers) once the first checkpoint is on disk; `torchrun ... train
    --resume` continues from it and ends with the history of a run that was never stopped,
    value for value."""
    common = _sets(
        f"data.root={synthetic_root}",
        "data.image_size=64",
        "train.epochs=4",
        "train.batch_size=8",
        "train.threads=1",
        "split.val_fraction=0.15",
        f"out_dir={tmp_path}",
    )
    _torchrun(2, [*common, *_sets("name=whole")], tmp_path)
    cut = tmp_path / "cut"
    started = subprocess.Popen(
        _torchrun_command(2, [*common, *_sets("name=cut")]),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (cut / "checkpoints" / "last.pt").is_file() and started.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.02)
    started.send_signal(signal.SIGTERM)
    started.wait(timeout=120)  # torchrun returns once its workers are gone
    assert not (cut / "metrics.json").exists(), "the run finished before it was killed"
    stopped_at = len(load_checkpoint(cut / "checkpoints" / "last.pt")["history"])
    assert 1 <= stopped_at < 4
    done = subprocess.run(
        [*_torchrun_command(2, ["--resume", str(cut)])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    whole, resumed = _history(tmp_path / "whole"), _history(cut)
    assert len(resumed) == len(whole) == 4
    for a, b in zip(resumed, whole, strict=True):
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    assert (cut / "bundle" / "bundle.json").is_file()


def test_a_segment_run_with_a_balancing_sampler_trains_on_two_processes(tmp_path):
    tiles = make_mask_set(tmp_path / "tiles", per_class=8, size=64)
    _torchrun(
        2,
        _sets(
            "task=segment",
            f"data.root={tiles}",
            "data.image_size=64",
            "train.epochs=2",
            "train.batch_size=4",
            "train.threads=1",
            "segment.encoder_depth=3",
            "segment.balance=true",
            f"out_dir={tmp_path}",
            "name=seg",
        ),
        tmp_path,
    )
    run = tmp_path / "seg"
    assert len(_history(run)) == 2
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 2
    assert (run / "bundle" / "bundle.json").is_file()


def test_sharded_sampler_splits_one_sequence_between_ranks(monkeypatch):
    base = [7, 3, 9, 1, 4]  # what a seeded sampler draws, the same on every rank
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        sampler = distributed.ShardedSampler(base)
        assert len(sampler) == 3
        shards.append(list(sampler))
    assert shards == [[7, 9, 4], [3, 1, 7]]  # padded with the start to equal shards
    assert sorted(set(shards[0] + shards[1])) == sorted(base)


@pytest.mark.numerics
def test_sharded_patchcore_padim_fit_builds_the_model_of_one_process(tiles, tmp_path):
    """Each rank extracts the features of its half of the good images; gathered in image
    order, they give the same memory bank, Gaussians and z-unit spreads as one process on
    all of them, hence the same calibrated threshold and test metrics."""
    from safetensors.torch import load_file

    common = _sets(
        "task=anomaly",
        "anomaly.method=patchcore_padim",
        "anomaly.good_label=Ok",
        "anomaly.blur_sigma=1",
        f"data.root={tiles}",
        "data.image_size=64",
        "train.threads=1",
        f"out_dir={tmp_path}",
    )
    _torchrun(2, [*common, *_sets("name=two")], tmp_path)
    one = subprocess.run(
        [sys.executable, "-m", "defectkit", "train", *common, *_sets("name=one")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two, single = (
        load_file(str(tmp_path / n / "bundle" / "model.safetensors")) for n in ("two", "one")
    )
    assert two.keys() == single.keys()
    for name in ("patchcore.memory_bank", "padim.mean", "padim.inverse_covariance", "spread"):
        assert two[name].shape == single[name].shape, name
        assert torch.allclose(two[name], single[name], rtol=1e-4, atol=1e-5), name
    metrics = [json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("two", "one")]
    assert metrics[0]["threshold"] == pytest.approx(metrics[1]["threshold"], rel=1e-4)
    assert metrics[0]["image_auroc"] == pytest.approx(metrics[1]["image_auroc"], abs=1e-9)
    assert metrics[0]["fit"]["patches"] == metrics[1]["fit"]["patches"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


def test_contiguous_shares_are_the_items_again_in_rank_order(monkeypatch):
    items = list(range(7))
    shares = []
    for rank in (0, 1, 2):
        monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        shares.append(distributed.contiguous_share(items))
    assert shares == [[0, 1, 2], [3, 4], [5, 6]]


def test_a_detect_run_trains_on_two_processes(tmp_path):
    from defectkit.data.synthetic import make_box_set

    parts = make_box_set(tmp_path / "boxes", count=24, size=64)
    _torchrun(
        2,
        _sets(
            "task=detect",
            f"data.root={parts}",
            "data.image_size=64",
            "train.epochs=2",
            "train.batch_size=4",
            "train.threads=1",
            f"out_dir={tmp_path}",
            "name=det",
        ),
        tmp_path,
    )
    run = tmp_path / "det"
    assert len(_history(run)) == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and 0.0 <= metrics["map_50"] <= 1.0
    assert (run / "bundle" / "bundle.json").is_file()
    assert len(list((run / "tensorboard").iterdir())) == 1  # rank 0 alone wrote
