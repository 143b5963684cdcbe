"""COCO JSON, labelme and CVAT XML: detected from the folder, boxes and polygons read in
image pixels (a polygon's mask is the polygon, not its box), and every malformed entry of
every file named in one error."""

import json

import numpy as np
import pytest
from PIL import Image

from defectkit.data.formats import detect_format, read_dataset
from defectkit.data.samples import DatasetError
from defectkit.data.segmentation import read_mask

TRIANGLE = [(10.0, 10.0), (50.0, 10.0), (10.0, 50.0)]


def _image(path, size=(64, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], 128, dtype=np.uint8)).save(path)
    return path


def _coco(folder, images, annotations, categories=({"id": 1, "name": "dent"},)):
    folder.mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annotations": annotations, "categories": list(categories)}
    (folder / "_annotations.coco.json").write_text(json.dumps(data))


def test_coco_split_folders_with_boxes_and_polygons(tmp_path):
    for split in ("train", "valid"):
        _image(tmp_path / split / "a.jpg")
        _image(tmp_path / split / "b.jpg")
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 64, "height": 64},
        {"id": 2, "file_name": "b.jpg", "width": 64, "height": 64},
    ]
    flat = [v for point in TRIANGLE for v in point]
    _coco(
        tmp_path / "train",
        images,
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 6, 20, 10]},
            {
                "id": 2,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 10, 40, 40],
                "segmentation": [flat],
            },
        ],
    )
    _coco(tmp_path / "valid", images, [])
    assert detect_format(tmp_path) == "coco"
    data = read_dataset(tmp_path)
    by_name = {(s.meta["split"], s.image.name): s for s in data.samples}
    assert set(by_name) == {
        ("train", "a.jpg"),
        ("train", "b.jpg"),
        ("val", "a.jpg"),
        ("val", "b.jpg"),
    }
    first = by_name[("train", "a.jpg")]
    assert first.label == "dent" and by_name[("val", "b.jpg")].label == "ok"
    box, triangle = first.boxes
    assert (box.x1, box.y1, box.x2, box.y2) == (5, 6, 25, 16)
    assert (triangle.x1, triangle.y1, triangle.x2, triangle.y2) == (10, 10, 50, 50)
    mask = read_mask(first)
    # the triangle's mask is half its box; the plain box is filled whole
    assert mask[12, 12] and mask[20, 20] and not mask[45, 45]
    assert mask[6:16, 5:25].all()
    assert mask[10:50, 10:50].sum() == pytest.approx(0.5 * 40 * 40, rel=0.1)


def test_coco_problems_are_named_together(tmp_path):
    _image(tmp_path / "train" / "a.jpg")
    _coco(
        tmp_path / "train",
        [
            {"id": 1, "file_name": "a.jpg", "width": 64, "height": 64},
            {"id": 2, "file_name": "gone.jpg", "width": 64, "height": 64},
        ],
        [
            {"id": 7, "image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5]},
            {"id": 8, "image_id": 1, "category_id": 4, "bbox": [1, 1, 5, 5]},
            {"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 5]},
        ],
    )
    with pytest.raises(DatasetError) as error:
        read_dataset(tmp_path)
    message = str(error.value)
    assert "4 problem(s)" in message
    for part in ("image id 9", "category id 4", "annotation 9", "'gone.jpg' does not exist"):
        assert part in message


def _labelme(path, shapes, size=(64, 64)):
    _image(path.with_suffix(".png"), size)
    note = {"shapes": shapes, "imagePath": path.with_suffix(".png").name}
    note.update({"imageWidth": size[0], "imageHeight": size[1]})
    path.with_suffix(".json").write_text(json.dumps(note))


def test_labelme_polygons_rectangles_and_unlabelled_images(tmp_path):
    _labelme(tmp_path / "p1", [{"label": "crack", "points": TRIANGLE, "shape_type": "polygon"}])
    _labelme(
        tmp_path / "p2",
        [{"label": "dent", "points": [[40, 30], [20, 10]], "shape_type": "rectangle"}],
    )
    _image(tmp_path / "p3.png")  # no json: a defect-free part
    assert detect_format(tmp_path) == "labelme"
    samples = {s.image.stem: s for s in read_dataset(tmp_path).samples}
    assert samples["p1"].label == "crack" and len(samples["p1"].boxes[0].polygon) == 3
    rectangle = samples["p2"].boxes[0]
    assert (rectangle.x1, rectangle.y1, rectangle.x2, rectangle.y2) == (20, 10, 40, 30)
    assert samples["p3"].label == "ok" and samples["p3"].boxes == ()


def test_a_labelme_polygon_of_two_points_is_refused(tmp_path):
    _labelme(
        tmp_path / "p1", [{"label": "crack", "points": [[1, 1], [9, 9]], "shape_type": "polygon"}]
    )
    with pytest.raises(DatasetError, match=r"p1\.json.*polygon needs 3 points or more, not 2"):
        read_dataset(tmp_path, "labelme")


def _cvat(root, body):
    (root / "annotations.xml").write_text(
        f"<annotations><version>1.1</version>{body}</annotations>"
    )


def test_cvat_boxes_and_polygons(tmp_path):
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "b.png")
    _cvat(
        tmp_path,
        '<image id="0" name="a.png" width="64" height="64">'
        '<box label="dent" xtl="4" ytl="5" xbr="20" ybr="30"/>'
        '<polygon label="crack" points="10,10;50,10;10,50"/></image>'
        '<image id="1" name="b.png" width="64" height="64"/>',
    )
    assert detect_format(tmp_path) == "cvat"
    samples = {s.image.name: s for s in read_dataset(tmp_path).samples}
    box, polygon = samples["a.png"].boxes
    assert (box.label, box.x1, box.y1, box.x2, box.y2) == ("dent", 4, 5, 20, 30)
    assert polygon.label == "crack" and polygon.polygon == tuple(TRIANGLE)
    assert samples["b.png"].label == "ok"


def test_cvat_boxes_outside_the_image_are_refused(tmp_path):
    _image(tmp_path / "images" / "a.png")
    _cvat(
        tmp_path,
        '<image id="0" name="a.png" width="64" height="64">'
        '<box label="dent" xtl="40" ytl="5" xbr="120" ybr="30"/></image>',
    )
    with pytest.raises(DatasetError, match=r"a\.png box 1 \(dent\).*outside the 64x64 image"):
        read_dataset(tmp_path)


def test_coco_annotations_folder_beside_images_is_not_taken_for_voc(tmp_path):
    _image(tmp_path / "images" / "a.jpg")
    (tmp_path / "annotations").mkdir()
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 20]}],
        "categories": [{"id": 3, "name": "pit"}],
    }
    (tmp_path / "annotations" / "instances_default.json").write_text(json.dumps(data))
    assert detect_format(tmp_path) == "coco"
    (sample,) = read_dataset(tmp_path).samples
    assert sample.label == "pit" and sample.boxes[0].x2 == 11 and sample.boxes[0].y2 == 22
