"""Test-time augmentation of a classifier (eval.tta): the probabilities are the mean over
the views of each image, everywhere the model decides: the run's test metrics and
predictions.csv, the threshold, the bundle's graph in PyTorch and in ONNX."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from defectkit.config import ConfigError, load_config
from defectkit.models.classifier import class_probabilities
from defectkit.runtime.export import check_export, export_onnx
from defectkit.runtime.inspector import Inspector
from defectkit.tasks import get_task
from tests.parity import assert_same_class_call


class _LeftHeavy(nn.Module):
    """Two logits that tell a mirrored image apart: the mean of its left and right halves."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        half = images.shape[-1] // 2
        left, right = images[..., :half].mean((1, 2, 3)), images[..., half:].mean((1, 2, 3))
        return torch.stack([left, right], 1) * 10


@pytest.mark.numerics
def test_class_probabilities_average_the_views_of_each_image():
    images = torch.zeros(1, 3, 4, 4)
    images[..., :2] = 1.0  # bright on the left: class 0 without views
    plain = class_probabilities(_LeftHeavy(), images)
    assert plain[0, 0] > 0.99
    mirrored = class_probabilities(_LeftHeavy(), images, views=2)  # itself and its mirror
    assert torch.allclose(mirrored, torch.tensor([[0.5, 0.5]]))
    flips = class_probabilities(_LeftHeavy(), images, views=4)
    expected = torch.stack(
        [
            _LeftHeavy()(x).softmax(1)
            for x in (images, images.flip(-1), images.flip(-2), images.flip(-1, -2))
        ]
    ).mean(0)
    assert torch.allclose(flips, expected, atol=1e-6)


@pytest.fixture(scope="module")
def tta_run(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = load_config(
        None,
        [
            f"data.root={synthetic_root}",
            "data.image_size=64",
            f"out_dir={out}",
            "name=tta",
            "train.epochs=2",
            "train.batch_size=8",
            "split.test_fraction=0.25",
            "split.val_fraction=0.2",
            "eval.tta=flips",
        ],
    )
    run_dir = out / "tta"
    run_dir.mkdir()
    return run_dir, get_task("classify")(config, run_dir, False)


@pytest.mark.numerics
def test_the_bundle_decides_with_the_views_the_run_was_tested_with(tta_run, tmp_path):
    run_dir, result = tta_run
    assert result["tta"] == "flips" and "mean over 4 views" in result["decided_by"]
    assert "mean over 4 views" in (run_dir / "report.html").read_text()
    assert json.loads((run_dir / "bundle" / "bundle.json").read_text())["tta"] == "flips"
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))
    paths = [row["image"] for row in rows]
    predictions = list(Inspector(run_dir).predict(paths, batch_size=5))
    for prediction, row in zip(predictions, rows, strict=True):
        assert_same_class_call(prediction, row)
    # the graph's views matter: one view alone gives other probabilities
    plain = Inspector(run_dir)
    assert plain._run.graph.views == 4
    plain._run.graph.views = 1
    single = list(plain.predict(paths))
    pairs = zip(predictions, single, strict=True)
    assert max(abs(a.scores[c] - b.scores[c]) for a, b in pairs for c in a.scores) > 1e-3
    bundle = tmp_path / "bundle"
    shutil.copytree(run_dir / "bundle", bundle)
    export_onnx(bundle)
    check = check_export(bundle, [Path(p) for p in paths])
    assert check["passed"] and check["decisions_disagree"] == [], check
    onnx = list(Inspector(bundle, "onnx").predict(paths))
    for a, b in zip(predictions, onnx, strict=True):
        for name, value in a.scores.items():
            assert b.scores[name] == pytest.approx(value, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize(
    ("task", "overrides", "message"),
    [
        ("classify", ["eval.tta=rotations"], r"eval.tta='rotations' is not one of"),
        ("segment", ["eval.tta=flips"], r"eval.tta=flips pools a classifier.s or a detector.s"),
    ],
)
def test_a_tta_that_does_not_fit_is_refused_before_training(
    task, overrides, message, synthetic_root, tiles, tmp_path
):
    root = synthetic_root if task == "classify" else tiles
    config = load_config(
        None, [f"task={task}", f"data.root={root}", f"out_dir={tmp_path}", *overrides]
    )
    with pytest.raises(ConfigError, match=message):
        get_task(task)(config, tmp_path, False)
    assert not (tmp_path / "bundle").exists()
