"""The few-shot path (views, a head at the class means, per-class subsets) and the learning
curve, on tiny synthetic images."""

import csv
import json
import random
from pathlib import Path

import pytest
import torch

import defectkit
from defectkit.config import ConfigError, load_config
from defectkit.data.formats import read_dataset
from defectkit.data.splits import per_class_subset
from defectkit.data.transforms import VIEWS, view
from defectkit.models.classifier import head_at_class_means
from defectkit.tasks.curve import parse_shots
from defectkit.tasks.settings import check_settings


def test_the_eight_views_are_the_flips_and_quarter_turns():
    image = torch.arange(12.0).reshape(1, 3, 4)  # no symmetry: every view differs
    views = [view(image, j) for j in range(VIEWS["dihedral"])]
    assert torch.equal(views[0], image)
    assert len({tuple(v.flatten().tolist()) + tuple(v.shape) for v in views}) == 8
    assert torch.equal(views[1], image.flip(-1)) and torch.equal(views[2], image.flip(-2))
    # a quarter turn is a transpose and a flip: view 5 (transpose after a horizontal flip)
    assert torch.equal(views[5], torch.rot90(image, 1, (-2, -1)))
    assert views[4].shape == (1, 4, 3)


def test_per_class_subsets_follow_the_protocol_and_are_nested(synthetic_root):
    samples = read_dataset(synthetic_root).samples
    five = per_class_subset(samples, 5, seed=3)
    ten = per_class_subset(samples, 10, seed=3)
    assert {s.image for s in five} < {s.image for s in ten}
    for label in ("ok", "scratch", "spot"):
        members = sorted((s for s in samples if s.label == label), key=lambda s: str(s.image))
        random.Random(3).shuffle(members)
        assert [s.image for s in five if s.label == label] == [s.image for s in members[:5]]
    assert len(per_class_subset(samples, 100, seed=0)) == len(samples)  # at most k: all 16


def test_a_head_at_the_class_means_is_the_nearest_mean_classifier():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(60, 32, generator=generator) + 2.0
    targets = torch.arange(60) % 4
    head = torch.nn.Linear(32, 4)
    head_at_class_means(head, features, targets)
    means = torch.stack([features[targets == c].mean(0) for c in range(4)])
    queries = torch.randn(200, 32, generator=generator) * 2 + 2.0
    nearest = torch.cdist(queries, means).argmin(1)
    assert torch.equal(head(queries).argmax(1), nearest)


def test_settings_refuse_unknown_views_and_a_negative_subset(synthetic_root):
    config = load_config(
        None, [f"data.root={synthetic_root}", "train.views=spin", "split.per_class=-1"]
    )
    with pytest.raises(ConfigError) as caught:
        check_settings(config, read_dataset(synthetic_root))
    assert "train.views='spin'" in str(caught.value)
    assert "split.per_class=-1" in str(caught.value)


def test_shots_are_parsed_and_checked():
    assert parse_shots("10, 1,5,5") == [1, 5, 10]
    for bad in ("0,5", "a,b", ""):
        with pytest.raises(ValueError, match="--shots"):
            parse_shots(bad)


def _fewshot_config(root: Path, out: Path, *extra: str):
    return load_config(
        None,
        [
            f"data.root={root}",
            "data.image_size=64",
            f"out_dir={out}",
            "name=curve",
            "split.test_fraction=0.25",
            "split.val_fraction=0",
            "train.strategy=fewshot",
            "train.epochs=10",
            "train.head_lr_mult=1",
            *extra,
        ],
    )


def test_fewshot_learns_from_two_images_per_class(synthetic_root, tmp_path):
    config = _fewshot_config(synthetic_root, tmp_path, "split.per_class=2")
    run_dir, result = defectkit.train(config)
    counts = json.loads((run_dir / "data_summary.json").read_text())["counts"]
    assert counts["train"] == {"ok": 2, "scratch": 2, "spot": 2}
    assert counts["test"] == {"ok": 4, "scratch": 4, "spot": 4}  # the test part is untouched
    assert result["accuracy"] >= 0.75  # 12 test images, chance 1/3
    # the bundle is a plain classifier: it decides as the run's evaluation did
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))
    inspector = defectkit.Inspector(run_dir / "bundle")
    called = [p.label for p in inspector.predict([row["image"] for row in rows])]
    assert called == [row["label"] for row in rows]


def test_learning_curve_trains_nested_subsets_and_goes_on_after_a_stop(synthetic_root, tmp_path):
    config = _fewshot_config(synthetic_root, tmp_path)
    folder, summary = defectkit.learning_curve(config, [1, 3], repeats=2)
    assert [p["k"] for p in summary["points"]] == [1, 3]
    assert all(p["runs"] == 2 for p in summary["points"])
    accuracy = [r["accuracy"] for r in summary["runs"] if r["k"] == 3]
    point = summary["points"][1]
    assert point["accuracy_mean"] == pytest.approx(sum(accuracy) / 2, rel=1e-9)
    assert point["accuracy_std"] == pytest.approx(abs(accuracy[0] - accuracy[1]) / 2, abs=1e-9)

    def trained_on(name: str) -> set[str]:
        return set(json.loads((folder / name / "split.json").read_text())["train"])

    assert trained_on("k1-r0") < trained_on("k3-r0")  # nested for one seed
    assert trained_on("k3-r0") != trained_on("k3-r1")  # another seed, another subset
    for run in summary["runs"]:
        assert {row["train_images"] for row in run["per_class"].values()} == {run["k"]}
    for name in ("curve.json", "report.html", "accuracy.png", "per_class.png"):
        assert (folder / name).is_file()
    for run in ("k1-r0", "k3-r1"):  # finished runs keep their results, not their models
        assert (folder / run / "predictions.csv").is_file()
        assert not (folder / run / "bundle").exists()
        assert not (folder / run / "checkpoints").exists()

    # run again with one run lost: the others are reused as they are, that one trains again
    import shutil

    kept = (folder / "k1-r0" / "metrics.json").stat().st_mtime_ns
    shutil.rmtree(folder / "k3-r1")
    _, again = defectkit.learning_curve(config, [1, 3], repeats=2)
    assert (folder / "k1-r0" / "metrics.json").stat().st_mtime_ns == kept
    assert (folder / "k3-r1" / "metrics.json").is_file()
    assert again["points"][1]["accuracy_mean"] == pytest.approx(point["accuracy_mean"], abs=1e-9)


def test_learning_curve_command_without_a_recipe(synthetic_root, tmp_path, capsys):
    """--task and --data only: the settings are drawn from the data (16 images per class:
    the few-shot path), and the command prints one line per k and the report."""
    from defectkit.cli import main

    code = main(
        [
            "learning-curve",
            "--keep-models",
            "--task",
            "classify",
            "--data",
            str(synthetic_root),
            "--shots",
            "2",
            "--repeats",
            "1",
            "--set",
            f"out_dir={tmp_path}",
            "--set",
            "name=lc",
            "--set",
            "data.image_size=64",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "k=2" in printed and "report:" in printed
    config = (tmp_path / "lc" / "k2-r0" / "config.yaml").read_text()
    assert "strategy: fewshot" in config and "per_class: 2" in config
    assert (tmp_path / "lc" / "k2-r0" / "bundle" / "bundle.json").is_file()  # --keep-models
    assert main(["learning-curve", "--config", "neu_fewshot", "--shots", "0"]) != 0
