"""Shared fixtures: tiny synthetic datasets made on the spot, and the real data beside the
checkout (tests that need it skip, saying why, where it is absent)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from defectkit.data.synthetic import make_classify_set

# the image-check cache of the tests, not the user's (~/.cache/defectkit)
os.environ["DEFECTKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="defectkit-cache-")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data {path} is absent (tests read ../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Class folders ok/scratch/spot, 16 greyscale 64x64 images each."""
    return make_classify_set(tmp_path_factory.mktemp("synthetic"), per_class=16, size=64)


def _train(task: str, recipe: str | None, out: Path, overrides: list[str]) -> Path:
    from defectkit.config import load_config
    from defectkit.tasks import get_task

    config = load_config(recipe, [f"out_dir={out}", "name=run", *overrides])
    run_dir = out / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    get_task(task)(config, run_dir, False)
    return run_dir / "bundle"


@pytest.fixture(scope="session")
def classify_bundle(synthetic_root, tmp_path_factory) -> Path:
    """A classifier (ok / scratch / spot) trained for one epoch on 64 px synthetic images."""
    return _train(
        "classify",
        None,
        tmp_path_factory.mktemp("classify-run"),
        [f"data.root={synthetic_root}", "data.image_size=64", "train.epochs=1"],
    )


@pytest.fixture(scope="session")
def tiles(tmp_path_factory) -> Path:
    """Magnetic-tile-style image + mask folders: Ok and three defect classes, 64 px."""
    from defectkit.data.synthetic import make_mask_set

    return make_mask_set(tmp_path_factory.mktemp("tiles"), per_class=16, size=64)


@pytest.fixture(scope="session")
def anomaly_bundle(tiles, tmp_path_factory) -> Path:
    """PatchCore fitted on the synthetic tiles' defect-free images."""
    return _train(
        "anomaly",
        "mt_anomaly",
        tmp_path_factory.mktemp("anomaly-run"),
        [
            f"data.root={tiles}",
            "data.image_size=64",
            "anomaly.good_label=Ok",
            "anomaly.method=patchcore",
            "anomaly.blur_sigma=1",
        ],
    )
