"""Shared fixtures: tiny synthetic datasets made on the spot, and the real data beside the
checkout (tests that need it skip, saying why, where it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from defectkit.data.synthetic import make_classify_set

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
