"""Readers and protocol splits on the real datasets in ../shared/data (skipped where absent)."""

import pytest

from defectkit.config import SplitConfig, load_config
from defectkit.data.formats import read_dataset
from defectkit.data.splits import make_split
from tests.conftest import shared

pytestmark = pytest.mark.integration


def test_neu_protocol_split():
    data = read_dataset(shared("neu-det/IMAGES"))
    assert data.layout == "name_prefix" and len(data) == 1770
    assert data.classes == (
        "crazing",
        "inclusion",
        "patches",
        "pitted_surface",
        "rolled-in_scale",
        "scratches",
    )
    split = make_split(data, load_config("neu_classify").split)
    # per class int(0.8 n) train: 295 -> 236, 296 -> 236, 294 -> 235
    assert (len(split.train), len(split.val), len(split.test)) == (1415, 0, 355)


def test_neu_voc_annotations_carry_boxes():
    data = read_dataset(shared("neu-det"))
    assert data.layout == "voc" and len(data) == 1770
    assert all(s.boxes for s in data.samples)


def test_magnetic_tile_pairs():
    data = read_dataset(shared("magnetic-tile"))
    assert data.layout == "image_mask"
    assert data.counts() == {
        "Blowhole": 115,
        "Break": 85,
        "Crack": 57,
        "Fray": 32,
        "Free": 952,
        "Uneven": 103,
    }
    assert all(s.mask is not None and s.mask.is_file() for s in data.samples)


def test_deeppcb_official_split():
    data = read_dataset(shared("deeppcb"))
    split = make_split(data, SplitConfig(method="official", val_fraction=0))
    assert (len(split.train), len(split.test)) == (311, 183)
    assert all(s.reference is not None and s.boxes for s in data.samples)


def test_elpv_from_the_pip_package():
    pytest.importorskip("elpv_dataset", reason="pip install elpv-dataset")
    data = read_dataset("elpv")
    assert len(data) == 2624 and data.counts() == {"ng": 821, "ok": 1803}
    split = make_split(data, load_config("elpv_classify").split)
    assert len(split.test) in range(650, 665)  # 25% of each label x cell-type stratum
