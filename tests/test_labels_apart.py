"""Label files in a folder of their own, as datasets are published (images in data/, labelme
JSON in label/; YOLO txt in labels/ beside a flat image folder; VOC xml anywhere named with
--labels; masks in ground_truth/), and readings that make no sense refused with the reason
and the fix, on tiny generated folders."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.cli import main
from defectkit.config import ConfigError, load_config
from defectkit.data.formats import read_dataset
from defectkit.data.samples import DatasetError
from defectkit.data.summary import servable_tasks
from defectkit.tasks.settings import check_settings


def _image(path: Path, size: int = 32, spot: tuple[int, int] | None = None) -> Path:
    pixels = np.full((size, size), 90, np.uint8)
    if spot is not None:
        y, x = spot
        pixels[y : y + 6, x : x + 6] = 250
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _labelme(path: Path, image: Path, box: tuple[int, int, int, int], label: str) -> None:
    x1, y1, x2, y2 = box
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = {"label": label, "shape_type": "rectangle", "points": [[x1, y1], [x2, y2]]}
    note = {"shapes": [shape], "imagePath": image.name, "imageWidth": 32, "imageHeight": 32}
    path.write_text(json.dumps(note))


@pytest.fixture
def published_labelme(tmp_path) -> Path:
    """data/part<n>_top.png (the prefix names no class) + label/part<n>_top.json for 8 of 12."""
    for n in range(12):
        image = _image(tmp_path / "set" / "data" / f"part{n}_top.png", spot=(n, n))
        if n < 8:
            _labelme(
                tmp_path / "set" / "label" / f"part{n}_top.json",
                image,
                (n, n, n + 6, n + 6),
                "dent",
            )
    return tmp_path / "set"


@pytest.mark.parametrize("where", ["data", "."])
def test_labelme_json_in_a_sibling_label_folder_is_found(published_labelme, where):
    """Pointed at data/ (read alone, its names would make 12 classes of one image) or at
    the folder above: the JSON in label/ label the images, the four without one are OK."""
    dataset = read_dataset(published_labelme / where)
    assert dataset.layout == "labelme"
    assert Path(dataset.labels) == published_labelme / "label"
    assert dataset.unlabelled == 4
    assert dataset.counts() == {"dent": 8, "ok": 4}
    boxed = {s.image.name: s.boxes for s in dataset.samples}
    assert [(b.x1, b.y1, b.x2, b.y2) for b in boxed["part3_top.png"]] == [(3, 3, 9, 9)]


def test_the_summary_says_where_the_labels_came_from_and_what_the_data_can_train(
    published_labelme, tmp_path, capsys
):
    assert (
        main(["data", "inspect", str(published_labelme / "data"), "--out", str(tmp_path / "i")])
        == 0
    )
    printed = capsys.readouterr().out
    assert f"labels from {published_labelme / 'label'}: 4 image(s) have no label file" in printed
    summary = json.loads((tmp_path / "i" / "summary.json").read_text())
    assert set(summary["tasks"]) == {"classify", "anomaly", "segment", "detect"}
    assert "tasks this data can train: classify (2 classes)" in printed


def test_yolo_txt_beside_a_flat_image_folder_with_class_names_above(tmp_path):
    for n in range(4):
        _image(tmp_path / "imgs" / f"a{n}.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a0.txt").write_text("1 0.5 0.5 0.25 0.25\n")
    (tmp_path / "labels" / "a1.txt").write_text("0 0.25 0.25 0.125 0.125\n")
    (tmp_path / "classes.txt").write_text("scratch\nspot\n")
    dataset = read_dataset(tmp_path / "imgs")
    assert dataset.layout == "yolo" and dataset.unlabelled == 2
    assert dataset.counts() == {"ok": 2, "scratch": 1, "spot": 1}
    (box,) = next(s for s in dataset.samples if s.image.name == "a0.png").boxes
    assert (box.x1, box.y1, box.x2, box.y2, box.label) == (12, 12, 20, 20, "spot")


def test_voc_xml_anywhere_named_with_labels(tmp_path):
    _image(tmp_path / "pictures" / "p1.png")
    _image(tmp_path / "pictures" / "p2.png")
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "p1.xml").write_text(
        "<annotation><filename>p1.png</filename><size><width>32</width><height>32</height>"
        "</size><object><name>pit</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>9</xmax>"
        "<ymax>12</ymax></bndbox></object></annotation>"
    )
    dataset = read_dataset(tmp_path / "pictures", labels=tmp_path / "exported")
    assert dataset.layout == "voc" and dataset.counts() == {"pit": 1}
    assert dataset.labels == str(tmp_path / "exported")
    with pytest.raises(DatasetError, match=r"holds no label files .* as 'yolo'"):
        read_dataset(tmp_path / "pictures", "yolo", labels=tmp_path / "exported")
    with pytest.raises(DatasetError, match="data.labels=.*: no such folder"):
        read_dataset(tmp_path / "pictures", labels=tmp_path / "nowhere")


def test_masks_in_ground_truth_beside_the_images(tmp_path):
    """data/ + ground_truth/, both folders of images: not two classes of a classifier."""
    for n in range(3):
        _image(tmp_path / "data" / f"t{n}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[4:8, 4:8] = 255 * (n > 0)
        (tmp_path / "ground_truth").mkdir(exist_ok=True)
        Image.fromarray(mask).save(tmp_path / "ground_truth" / f"t{n}_mask.png")
    dataset = read_dataset(tmp_path)
    assert dataset.layout == "image_mask" and dataset.counts() == {"defect": 2, "ok": 1}
    assert all(s.mask.parent.name == "ground_truth" for s in dataset.samples)


def test_a_folder_of_names_that_are_no_classes_is_refused_with_the_fix(tmp_path):
    for n in range(12):
        _image(tmp_path / f"IMG_{n:04d}_2024.png")  # prefixes IMG_0000, IMG_0001, ...
    with pytest.raises(DatasetError, match=r"12 classes for 12 images.*--labels PATH"):
        read_dataset(tmp_path)
    assert len(read_dataset(tmp_path, "name_prefix").classes) == 12  # named: read as asked


def test_a_class_folder_per_image_is_refused(tmp_path):
    for n in range(10):
        _image(tmp_path / f"lot{n}" / "shot.png")
    with pytest.raises(DatasetError, match="every one of its 10 class folders a single image"):
        read_dataset(tmp_path)


def test_segment_refuses_masks_that_mark_nothing(tmp_path):
    for n in range(4):
        _image(tmp_path / "images" / f"m{n}.png")
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "masks" / f"m{n}.png")
    dataset = read_dataset(tmp_path)
    config = load_config(None, ["task=segment", f"data.root={tmp_path}", "data.image_size=64"])
    with pytest.raises(ConfigError, match="every mask of .* is empty"):
        check_settings(config, dataset)
    assert "segment" in servable_tasks(dataset)  # masks there are; none marks a defect


def test_detect_refuses_boxes_that_are_whole_images(tmp_path):
    for n in range(4):
        _image(tmp_path / "images" / f"w{n}.png")
    (tmp_path / "labels").mkdir()
    for n in range(4):
        (tmp_path / "labels" / f"w{n}.txt").write_text(f"{n % 2} 0.5 0.5 1 1\n")
    dataset = read_dataset(tmp_path)
    assert dataset.layout == "yolo"
    config = load_config(None, ["task=detect", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"4 of the 4 boxes .* image-level labels.*classify"):
        check_settings(config, dataset)


def test_train_takes_labels_and_checks_everything_in_a_dry_run(published_labelme, capsys):
    code = main(
        [
            "train",
            "--task",
            "detect",
            "--data",
            str(published_labelme / "data"),
            "--labels",
            str(published_labelme / "label"),
            "--dry-run",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "labelme" in printed and f"labels: {published_labelme / 'label'}" in printed
