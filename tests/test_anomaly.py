"""The anomaly task on tiny synthetic magnetic-tile-style data, and its building blocks."""

from pathlib import Path

import pytest
import torch

from defectkit.config import load_config
from defectkit.data.formats import DatasetError
from defectkit.data.synthetic import make_mask_set
from defectkit.models.anomaly import create_method, list_methods
from defectkit.models.anomaly.patchcore import greedy_coreset, nearest_distance
from defectkit.tasks import get_task


def test_greedy_coreset_covers_every_cluster():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]])
    points = torch.cat([c + torch.randn(500, 2, generator=generator) for c in centres])
    chosen = greedy_coreset(points, 4, projection_dim=64)
    clusters = {int(i) // 500 for i in chosen}
    assert clusters == {0, 1, 2, 3}  # a random sample of 4 would often miss one
    assert len(greedy_coreset(points, 5000)) == 2000  # never more than there are


def test_nearest_distance_matches_brute_force():
    generator = torch.Generator().manual_seed(1)
    queries, bank = (
        torch.randn(300, 16, generator=generator),
        torch.randn(50, 16, generator=generator),
    )
    expected = torch.cdist(queries, bank).min(1).values
    assert torch.allclose(nearest_distance(queries, bank, chunk=64), expected, atol=1e-4)


def test_registry_lists_patchcore_and_refuses_unknown():
    assert "patchcore" in list_methods()
    with pytest.raises(ValueError, match="unknown anomaly method 'magic'"):
        create_method("magic")


@pytest.fixture(scope="module")
def anomaly_run(tmp_path_factory):
    root = make_mask_set(tmp_path_factory.mktemp("tiles"), per_class=16, size=64)
    out = tmp_path_factory.mktemp("runs")
    config = load_config(
        "mt_anomaly",
        [
            f"data.root={root}",
            "data.image_size=64",
            f"out_dir={out}",
            "name=a",
            "anomaly.good_label=Ok",
            "anomaly.blur_sigma=1",
        ],
    )
    run_dir = out / "a"
    run_dir.mkdir()
    return run_dir, get_task("anomaly")(config, run_dir, False)


def test_anomaly_run_separates_synthetic_defects(anomaly_run):
    run_dir, result = anomaly_run
    assert result["test_images"] == 4 + 32  # 20% of 16 good images, every defect image
    assert result["calibration_images"] == 1
    assert result["image_auroc"] >= 0.9
    assert result["pixel_auroc"] >= 0.8
    assert 0.0 <= result["aupro"] <= 1.0
    assert result["fit"]["memory_bank"] >= 1
    for name in (
        "metrics.json",
        "report.html",
        "bundle/bundle.json",
        "bundle/model.safetensors",
        "plots/heat_caught.png",
        "plots/score_histogram.png",
    ):
        assert (run_dir / name).is_file(), name


def test_anomaly_needs_a_good_class(tmp_path):
    root = make_mask_set(tmp_path / "t", per_class=2, size=32)
    config = load_config(
        "mt_anomaly", [f"data.root={root}", f"out_dir={tmp_path}", "anomaly.good_label=Free"]
    )
    with pytest.raises(DatasetError, match="good_label='Free' is not a class"):
        get_task("anomaly")(config, Path(tmp_path), False)
