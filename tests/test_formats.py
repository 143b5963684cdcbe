"""Each reader on a tiny folder laid out as the real datasets are."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.data.formats import detect_format, read_dataset
from defectkit.data.samples import DatasetError
from defectkit.data.segmentation import read_mask
from defectkit.data.synthetic import make_mask_set


def _image(path: Path, size=(16, 16), value=100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)
    return path


def test_class_folders(synthetic_root):
    data = read_dataset(synthetic_root)
    assert data.layout == "class_folders"
    assert data.classes == ("ok", "scratch", "spot")
    assert data.counts() == {"ok": 16, "scratch": 16, "spot": 16}


def test_empty_class_folder_is_named(tmp_path):
    _image(tmp_path / "ok" / "a.png")
    _image(tmp_path / "ng" / "b.png")
    (tmp_path / "scratch").mkdir()
    with pytest.raises(DatasetError, match=r"scratch holds no images"):
        read_dataset(tmp_path, "class_folders")


def test_name_prefix_neu_style(tmp_path):
    for name in ("crazing_1.jpg", "crazing_2.jpg", "rolled-in_scale_1.jpg", "Cr_1.bmp"):
        _image(tmp_path / name)
    data = read_dataset(tmp_path)
    assert data.layout == "name_prefix"
    assert data.counts() == {"Cr": 1, "crazing": 2, "rolled-in_scale": 1}


def test_voc_boxes_and_missing_image(tmp_path):
    _image(tmp_path / "IMAGES" / "scratches_1.jpg", (200, 200))
    xml = (
        "<annotation><filename>scratches_1.jpg</filename>"
        "<object><name>scratches</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>40</xmax>"
        "<ymax>50</ymax></bndbox></object></annotation>"
    )
    (tmp_path / "ANNOTATIONS").mkdir()
    (tmp_path / "ANNOTATIONS" / "scratches_1.xml").write_text(xml)
    data = read_dataset(tmp_path)
    assert data.layout == "voc"
    (sample,) = data.samples
    assert sample.label == "scratches"
    assert (sample.boxes[0].x1, sample.boxes[0].y2) == (2.0, 50.0)
    (tmp_path / "ANNOTATIONS" / "gone_1.xml").write_text(xml.replace("scratches_1", "gone_1"))
    with pytest.raises(DatasetError, match="gone_1.xml: names image"):
        read_dataset(tmp_path)


def test_yolo_boxes_and_polygons(tmp_path):
    _image(tmp_path / "images" / "a.png", (100, 50))
    _image(tmp_path / "images" / "b.png", (100, 50))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    (tmp_path / "labels" / "b.txt").write_text("0 0.1 0.2 0.3 0.2 0.3 0.6\n")
    (tmp_path / "classes.txt").write_text("crack\nspot\n")
    data = read_dataset(tmp_path)
    assert data.layout == "yolo"
    a, b = data.samples
    assert a.label == "spot"
    assert (a.boxes[0].x1, a.boxes[0].y1, a.boxes[0].x2, a.boxes[0].y2) == pytest.approx(
        (40, 15, 60, 35)
    )
    assert b.label == "crack"
    assert (b.boxes[0].x1, b.boxes[0].y2) == pytest.approx((10, 30))
    # the segment keeps its points in pixels: a mask is the triangle, not its box
    points = [v for point in b.boxes[0].polygon for v in point]
    assert points == pytest.approx([10, 10, 30, 10, 30, 30])
    assert a.boxes[0].polygon == ()
    mask = read_mask(b)
    assert mask[12, 28] and not mask[28, 12]


def test_image_mask_magnetic_tile_layout(tmp_path):
    make_mask_set(tmp_path, per_class=2, size=32)
    data = read_dataset(tmp_path)
    assert data.layout == "image_mask"
    assert data.classes == ("Ok", "Scratch", "Spot")  # the shared MT_ prefix is dropped
    assert all(s.mask is not None and s.mask.suffix == ".png" for s in data.samples)
    (tmp_path / "MT_Spot" / "Imgs" / "spot0.png").unlink()
    with pytest.raises(DatasetError, match="spot0.jpg has no mask"):
        read_dataset(tmp_path, "image_mask")


def test_mvtec_layout(tmp_path):
    _image(tmp_path / "train" / "good" / "000.png")
    _image(tmp_path / "test" / "good" / "000.png")
    _image(tmp_path / "test" / "crack" / "000.png")
    _image(tmp_path / "ground_truth" / "crack" / "000_mask.png")
    data = read_dataset(tmp_path)
    assert data.layout == "mvtec"
    splits = [(s.label, s.meta["split"], s.mask is not None) for s in data.samples]
    assert splits == [("good", "train", False), ("crack", "test", True), ("good", "test", False)]


def test_deeppcb_pairs(tmp_path):
    group = tmp_path / "group1" / "1"
    _image(group / "10_test.jpg")
    _image(group / "10_temp.jpg")
    (tmp_path / "group1" / "1_not").mkdir()
    (tmp_path / "group1" / "1_not" / "10.txt").write_text("1 2 3 4 3\n")
    (tmp_path / "trainval.txt").write_text("group1/1/10.jpg group1/1_not/10.txt\n")
    (tmp_path / "test.txt").write_text("")
    (sample,) = read_dataset(tmp_path).samples
    assert sample.reference.name == "10_temp.jpg"
    assert sample.boxes[0].label == "mousebite"
    assert sample.meta["split"] == "train"


def test_elpv_labels(tmp_path):
    _image(tmp_path / "images" / "c1.png")
    _image(tmp_path / "images" / "c2.png")
    (tmp_path / "labels.csv").write_text(
        "images/c1.png 0.3333333333333333 mono\nimages/c2.png 1.0 poly\n"
    )
    binary = read_dataset(tmp_path)
    assert [s.label for s in binary.samples] == ["ok", "ng"]
    four = read_dataset(tmp_path, label_mode="4class")
    assert [s.label for s in four.samples] == ["p033", "p100"]
    assert four.samples[1].meta["type"] == "poly"


def test_unknown_layout_says_what_was_found_and_expected(tmp_path):
    (tmp_path / "notes").mkdir()
    _image(tmp_path / "single.png")
    with pytest.raises(DatasetError) as error:
        detect_format(tmp_path)
    message = str(error.value)
    assert "notes" in message and "1 image(s)" in message
    assert "class_folders" in message and "data.format" in message


def test_missing_folder():
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset("/no/such/folder")


def test_images_and_masks_with_an_empty_mask_read_as_ok(tmp_path):
    """images/ + masks/: an all-zero mask is a defect-free image, so the anomaly task finds
    its good class and classify sees two; faint mask noise (<= 127) is not a defect."""
    from PIL import Image

    for name, peak in (("a", 255), ("b", 0), ("c", 90)):
        _image(tmp_path / "images" / f"{name}.jpg", (32, 32))
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[4:8, 4:8] = peak
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
    data = read_dataset(tmp_path)
    assert data.layout == "image_mask"
    assert {s.image.stem: s.label for s in data.samples} == {"a": "defect", "b": "ok", "c": "ok"}
    assert data.classes == ("defect", "ok")
