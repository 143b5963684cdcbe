"""Training on several processes through torchrun (gloo on the CPU): two processes train as
one process with the same global batch, only rank 0 writes the run folder, and the
class-balancing samplers are sharded between the ranks."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from defectkit.data.synthetic import make_mask_set
from defectkit.engine import distributed


def _torchrun(processes: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={processes}", "-m", "defectkit", "train", *args]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _sets(*pairs: str) -> list[str]:
    return [part for pair in pairs for part in ("--set", pair)]


def _history(run_dir: Path) -> list[dict[str, float]]:
    return [
        {k: float(v) for k, v in row.items()}
        for row in csv.DictReader(open(run_dir / "history.csv"))
    ]


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
