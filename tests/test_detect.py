"""The detect task: boxes move with the pixels under augmentation, COCO mAP matches values
worked out by hand, a short run on synthetic parts finds the drawn boxes, and its bundle
gives the run's numbers through the Inspector, `eval` and ONNX Runtime."""

import csv

import numpy as np
import pytest
import torch

import defectkit
from defectkit.data.detection import DetectionDataset, to_image, to_input
from defectkit.data.samples import Box, DatasetError, Sample
from defectkit.data.synthetic import make_box_set
from defectkit.runtime.evaluate import evaluate_bundle
from defectkit.runtime.export import check_export, export_onnx
from defectkit.runtime.inspector import Inspector
from defectkit.tasks.detect.evaluate import coco_map

DETECT = [
    "task=detect",
    "data.image_size=96",
    "train.epochs=15",
    "train.batch_size=8",
    "train.lr=0.001",
    "train.head_lr_mult=1",
    "train.warmup_epochs=2",
    "train.threads=2",
]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return make_box_set(tmp_path_factory.mktemp("boxes"), count=96, size=96)


@pytest.fixture(scope="module")
def detect_run(parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return defectkit.train(None, [*DETECT, f"data.root={parts}", f"out_dir={out}", "name=d"])


def test_boxes_move_with_the_pixels_under_every_augmentation(tmp_path):
    """A bright 20 x 8 bar on a dark image: after flips and quarter turns the box still
    covers the bright pixels exactly."""
    from PIL import Image

    image = np.zeros((64, 64), dtype=np.uint8)
    image[10:18, 30:50] = 255  # rows 10..17, columns 30..49
    Image.fromarray(image).save(tmp_path / "bar.png")
    sample = Sample(tmp_path / "bar.png", "bar", boxes=(Box(30, 10, 50, 18, "bar"),))
    dataset = DetectionDataset(
        [sample], ["bar"], size=64, mean=[0, 0, 0], std=[1, 1, 1], augment=True, seed=1
    )
    seen = set()
    for _ in range(24):
        x, target = dataset[0]
        (x1, y1, x2, y2) = target["boxes"][0].round().int().tolist()
        seen.add((x2 - x1, y2 - y1))
        bright = x[0] > x[0].mean()
        inside = bright[y1:y2, x1:x2]
        assert inside.float().mean() > 0.95  # the box holds the bar ...
        assert bright.sum() == pytest.approx(inside.sum().item(), rel=0.05)  # ... all of it
    assert seen == {(20, 8), (8, 20)}  # turned and not


def test_boxes_go_to_the_input_and_back_for_squash_and_pad():
    boxes = torch.tensor([[10.0, 20.0, 110.0, 40.0]])
    for resize in ("squash", "pad"):
        there = to_input(boxes, 50, 200, 64, resize)
        assert torch.allclose(to_image(there, 50, 200, 64, resize), boxes, rtol=1e-5)
    # pad: the 200 x 50 image fills 64 x 16 in the middle rows 24..40
    assert torch.allclose(
        to_input(boxes, 50, 200, 64, "pad"), torch.tensor([[3.2, 30.4, 35.2, 36.8]])
    )


def test_coco_map_matches_a_hand_worked_value():
    """Two images with one true box each; a perfect box scored 0.9 on the first and a box
    far from anything scored 0.8 on the second. Precision is 1 up to recall 0.5 and nothing
    beyond, so COCO's 101-point AP is 51/101 at every IoU threshold (the hit is exact)."""
    truths = [[(0, 0.0, 0.0, 10.0, 10.0)], [(0, 0.0, 0.0, 10.0, 10.0)]]
    found = [[(0, 0.9, 0.0, 0.0, 10.0, 10.0)], [(0, 0.8, 50.0, 50.0, 60.0, 60.0)]]
    result = coco_map(truths, found, ["dent", "scratch"])
    assert result["map_50"] == pytest.approx(51 / 101, rel=1e-6)
    assert result["map"] == pytest.approx(51 / 101, rel=1e-6)
    assert result["ap_50"] == {"dent": pytest.approx(51 / 101, rel=1e-6), "scratch": None}
    # the box on the empty place scored higher than the hit: precision 0.5 from the start
    swapped = [[(0, 0.7, 0.0, 0.0, 10.0, 10.0)], [(0, 0.8, 50.0, 50.0, 60.0, 60.0)]]
    assert coco_map(truths, swapped, ["dent"])["map_50"] == pytest.approx(0.5 * 51 / 101, rel=1e-6)
    assert coco_map(truths, [[], []], ["dent"])["map_50"] == 0.0


def test_a_detect_run_finds_the_drawn_boxes(detect_run):
    run_dir, result = detect_run
    with open(run_dir / "history.csv") as history:
        losses = [float(row["train_loss"]) for row in csv.DictReader(history)]
    assert losses[-1] < 0.6 * losses[0]  # training reduced the loss
    assert result["map_50"] >= 0.6  # spots and bars on a plain surface
    assert result["ap_50"]["spot"] >= 0.6
    assert result["box_recall"] >= 0.5
    assert (run_dir / "report.html").read_text().count("AP@0.5") >= 1
    predictions = (run_dir / "predictions.csv").read_text().splitlines()
    assert len(predictions) == result["images"] + 1


def test_the_bundle_gives_the_run_numbers_through_the_inspector(detect_run, parts):
    run_dir, result = detect_run
    evaluated = evaluate_bundle(run_dir, parts, split_manifest=run_dir / "split.json")
    for key in ("map_50", "map", "box_recall", "box_precision", "ng_recall"):
        assert evaluated[key] == pytest.approx(result[key], rel=1e-6, abs=1e-9), key
    inspector = Inspector(run_dir)
    spotted = [p for p in inspector.predict(sorted(parts.glob("JPEGImages/*.png"))) if not p.ok]
    assert spotted and all(p.regions and p.label == p.regions[0].label for p in spotted)
    assert {r.label for p in spotted for r in p.regions} <= {"spot", "scratch"}


def test_onnx_export_gives_the_same_boxes(detect_run, parts):
    run_dir, _ = detect_run
    export_onnx(run_dir)
    images = sorted(parts.glob("JPEGImages/*.png"))[:24]
    check = check_export(run_dir, images)
    assert check["passed"], check
    torch_boxes = list(Inspector(run_dir, "torch").predict(images))
    onnx_boxes = list(Inspector(run_dir, "onnx").predict(images))
    for a, b in zip(torch_boxes, onnx_boxes, strict=True):
        assert len(a.boxes) == len(b.boxes)
        for r, s in zip(a.boxes, b.boxes, strict=True):
            assert r.label == s.label
            assert [r.x, r.y, r.width, r.height] == pytest.approx(
                [s.x, s.y, s.width, s.height], abs=0.11
            )


def test_a_dataset_without_boxes_is_refused_with_the_fix(synthetic_root, tmp_path):
    with pytest.raises(DatasetError, match="no image has a box"):
        defectkit.train(None, ["task=detect", f"data.root={synthetic_root}", f"out_dir={tmp_path}"])
