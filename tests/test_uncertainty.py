"""How sure a number is: bootstrap intervals in metrics.json and the report, a warning with
few NG test images, and k-fold cross-validation over every fold."""

import json

import pytest

from defectkit.cli import main
from defectkit.data.synthetic import make_classify_set


def test_a_run_reports_intervals_and_warns_of_few_ng_images(tmp_path, tiles):
    """An OK/NG classifier on a small set: every headline number carries its interval (which
    holds the number), the test part's handful of NG images is flagged in metrics and report."""
    data = make_classify_set(tmp_path / "data", per_class=20, size=48, classes=("ok", "spot"))
    (data / "spot").rename(data / "ng")
    out = tmp_path / "runs"
    args = ["train", "--task", "classify", "--data", str(data)]
    sets = ["train.epochs=1", f"out_dir={out}", "name=run"]
    assert main([*args, *(a for s in sets for a in ("--set", s))]) == 0
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        low, high = metrics["intervals"][key]
        assert low <= metrics[key] <= high and low >= 0 and high <= 1
    assert metrics["ng_test_images"] == 4  # 20 % of 20
    assert "only 4 NG image(s)" in metrics["few_ng_warning"]
    page = (out / "run" / "report.html").read_text()
    assert "Few NG test images" in page and "95% percentile bootstrap over the 8" in page


def test_kfold_all_trains_every_fold_and_pools_them(tmp_path, synthetic_root):
    out = tmp_path / "runs"
    sets = [
        f"data.root={synthetic_root}",
        "data.image_size=32",
        "train.epochs=1",
        "split.method=kfold",
        "split.folds=3",
        "split.val_fraction=0",
        f"out_dir={out}",
        "name=cv",
    ]
    assert main(["train", "--folds", "all", *(a for s in sets for a in ("--set", s))]) == 0
    summary = json.loads((out / "cv" / "kfold.json").read_text())
    assert summary["folds"] == 3 and len(summary["per_fold"]) == 3
    accuracies = [f["accuracy"] for f in summary["per_fold"]]
    assert summary["mean"]["accuracy"] == pytest.approx(sum(accuracies) / 3, rel=1e-9)
    assert summary["pooled"]["images"] == 48  # every image a test image exactly once
    tested = set()
    for fold in range(3):
        split = json.loads((out / "cv" / f"fold-{fold}" / "split.json").read_text())
        assert not tested & set(split["test"])
        tested |= set(split["test"])
    assert len(tested) == 48
    assert "pooled out-of-fold" in (out / "cv" / "report.html").read_text()
