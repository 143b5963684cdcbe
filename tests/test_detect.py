"""The detect task: boxes move with the pixels under augmentation, COCO mAP matches values
worked out by hand, a short run on synthetic parts finds the drawn boxes, and its bundle
gives the run's numbers through the Inspector, `eval` and ONNX Runtime."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

import defectkit
from defectkit.config import DetectConfig, ModelConfig
from defectkit.data.detection import DetectionDataset, to_input
from defectkit.data.prepare import boxes_to_image
from defectkit.data.samples import Box, DatasetError, Sample
from defectkit.data.synthetic import make_box_set
from defectkit.models.detector import ARCHS, build_detector
from defectkit.predictions import (
    Region,
    box_differences,
    calibrated_box_scores,
    decide_detect,
    match_boxes,
)
from defectkit.runtime.evaluate import evaluate_bundle
from defectkit.runtime.export import check_export, export_onnx
from defectkit.runtime.inspector import Inspector
from defectkit.tasks.detect.evaluate import box_curves, choose_box_thresholds, coco_map, point_at
from defectkit.tasks.detect.pipeline import CLASS_LAYERS, transferable
from tests.frozen import assert_first_two_stages_as_loaded

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
    """A bright 20 x 8 bar in the middle of a dark image: after scale jitter, flips and
    quarter turns the box still covers the bright pixels, all of them."""
    from PIL import Image

    image = np.zeros((64, 64), dtype=np.uint8)
    image[28:36, 22:42] = 255  # rows 28..35, columns 22..41: inside any zoomed crop
    Image.fromarray(image).save(tmp_path / "bar.png")
    sample = Sample(tmp_path / "bar.png", "bar", boxes=(Box(22, 28, 42, 36, "bar"),))
    dataset = DetectionDataset(
        [sample], ["bar"], size=64, mean=[0, 0, 0], std=[1, 1, 1], augment=True, seed=1
    )
    dataset.scale_jitter = 0.25
    shapes = set()
    for _ in range(40):
        x, target = dataset[0]
        (x1, y1, x2, y2) = target["boxes"][0].round().int().tolist()
        shapes.add((x2 - x1, y2 - y1))
        bright = x[0] > (x[0].min() + x[0].max()) / 2  # resampled edges: half in, half out
        inside = bright[y1:y2, x1:x2]
        assert inside.float().mean() > 0.85  # the box holds the bar ...
        assert bright.sum() == pytest.approx(inside.sum().item(), rel=0.1)  # ... all of it
    assert any(w > h for w, h in shapes) and any(h > w for w, h in shapes)  # turned and not
    assert len({max(w, h) for w, h in shapes}) >= 3  # zoomed in and out


def test_mosaic_moves_each_images_boxes_with_its_pixels(tmp_path):
    """Four images, each with one bar of its own class and grey level: in every mosaic each
    kept box covers a uniform piece of a bar, the boxes' grey levels rank as their classes
    do (the labels came along with their pixels), inputs mix images, and a bar left without
    a box is at most a sliver (YOLOv5's rule: 2 pixels a side, a tenth of the box)."""
    from PIL import Image

    samples = []
    for k, name in enumerate("abcd"):
        image = np.zeros((64, 64), dtype=np.uint8)
        y, x = 8 + 12 * k, 6 + 8 * k
        image[y : y + 10, x : x + 24] = 64 * (k + 1) - 1
        Image.fromarray(image).save(tmp_path / f"{name}.png")
        bar = Box(x, y, x + 24, y + 10, name)
        samples.append(Sample(tmp_path / f"{name}.png", name, boxes=(bar,)))
    dataset = DetectionDataset(
        samples, list("abcd"), size=64, mean=[0, 0, 0], std=[1, 1, 1], augment=True, mosaic=1.0
    )
    mixed = 0
    for draw in range(60):
        x, target = dataset[draw % 4]
        background = x[0].min()
        levels = {}
        covered = torch.zeros(64, 64, dtype=torch.bool)
        boxes, labels = target["boxes"].round().int().tolist(), target["labels"].tolist()
        for (x1, y1, x2, y2), label in zip(boxes, labels, strict=True):
            inside = x[0, y1:y2, x1:x2]
            assert inside.numel() > 0 and float(inside.std()) < 0.02  # one bar, nothing else
            assert float(inside.mean()) > float(background) + 0.1
            levels[label] = float(inside.mean())
            covered[y1:y2, x1:x2] = True
        ranked = [levels[k] for k in sorted(levels)]
        assert ranked == sorted(ranked)
        mixed += len(levels) >= 2
        uncovered = ((x[0] > background + 0.1) & ~covered).sum()
        assert uncovered <= 4 * 2 * 24  # four slivers at most, each 2 pixels by a bar
    assert mixed >= 10


def test_boxes_go_to_the_input_and_back_for_squash_and_pad():
    boxes = torch.tensor([[10.0, 20.0, 110.0, 40.0]])
    for resize in ("squash", "pad"):
        there = to_input(boxes, 50, 200, 64, resize)
        back = boxes_to_image(there.numpy(), 50, 200, 64, resize)
        np.testing.assert_allclose(back, boxes.numpy(), rtol=1e-5)
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


def test_faster_coco_eval_measures_what_pycocotools_measures():
    """The evaluator the metrics use (faster-coco-eval) and the original (pycocotools)
    agree on 40 images of jittered, missed and invented boxes of three classes of every
    size (one class with no true box), at every IoU threshold and recall point."""
    rng = np.random.default_rng(0)
    truths, found = [], []
    for _ in range(40):
        image_truths, image_found = [], []
        for _ in range(rng.integers(0, 4)):
            k = int(rng.integers(0, 2))
            x, y = rng.uniform(0, 400, 2)
            w, h = rng.uniform(4, 200, 2)
            image_truths.append((k, x, y, x + w, y + h))
            if rng.random() < 0.8:  # found, off by up to a third of its size
                dx, dy = rng.uniform(-0.3, 0.3, 2) * (w, h)
                label = k if rng.random() < 0.9 else 2
                image_found.append((label, rng.uniform(0.05, 1), x + dx, y + dy, x + w + dx, y + h))
        for _ in range(rng.integers(0, 3)):  # boxes on nothing
            x, y = rng.uniform(0, 400, 2)
            k = int(rng.integers(0, 3))
            image_found.append((k, rng.uniform(0.05, 1), x, y, x + 30, y + 50))
        truths.append(image_truths)
        found.append(image_found)
    classes = ["dent", "scratch", "stain"]
    fast = coco_map(truths, found, classes)
    reference = coco_map(truths, found, classes, backend="pycocotools")
    assert 0.2 < reference["map_50"] < 0.95  # a mix of hits and misses, not a trivial case
    for key in ("map", "map_50", "map_75"):
        assert fast[key] == pytest.approx(reference[key], abs=1e-9), key
    assert fast["ap_50"] == pytest.approx(reference["ap_50"], abs=1e-9)
    assert fast["ap_50"]["stain"] is None
    for name, curve in reference["pr_50"].items():
        assert fast["pr_50"][name] == pytest.approx(curve, abs=1e-9), name
    with pytest.raises(ValueError, match="unknown COCO backend"):
        coco_map(truths, found, classes, backend="torchmetrics")


def test_box_thresholds_are_chosen_on_a_hand_worked_curve():
    """Two true dents; dent boxes scored 0.9 (a hit), 0.8 (on nothing) and 0.7 (the other
    hit): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 as the threshold falls. F1 is best
    (0.8) at 0.7; precision >= 0.9 is first reached at 0.9, >= 0.6 last at 0.7. Each
    threshold goes halfway to the next box below (0.8 under 0.9; the floor, 0.05, under the
    last box, 0.7). The scratch boxes find no true box: the class keeps the fallback."""
    truths = [[(0, 0.0, 0.0, 10.0, 10.0)], [(0, 20.0, 20.0, 30.0, 30.0)]]
    found = [
        [(0, 0.9, 0.0, 0.0, 10.0, 10.0), (0, 0.8, 50.0, 50.0, 60.0, 60.0)],
        [(0, 0.7, 21.0, 20.0, 31.0, 30.0), (1, 0.95, 20.0, 20.0, 30.0, 30.0)],
    ]
    curves = box_curves(truths, found, ["dent", "scratch"], iou=0.5)
    dent = curves["dent"]
    assert dent["true"] == 2 and dent["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert dent["precision"].tolist() == pytest.approx([1, 0.5, 2 / 3])
    assert dent["recall"].tolist() == pytest.approx([0.5, 0.5, 1])
    assert curves["scratch"]["true"] == 0 and curves["scratch"]["precision"].tolist() == [0]
    f1 = choose_box_thresholds(curves, "f1", 0.7, fallback=0.3, floor=0.05)
    assert f1 == {"dent": pytest.approx(0.375), "scratch": 0.3}
    assert point_at(dent, f1["dent"]) == pytest.approx({"precision": 2 / 3, "recall": 1.0})
    strict = choose_box_thresholds(curves, "precision", 0.9, fallback=0.3, floor=0.05)
    assert strict["dent"] == pytest.approx(0.85)
    assert point_at(dent, strict["dent"]) == {"precision": 1.0, "recall": 0.5}
    loose = choose_box_thresholds(curves, "precision", 0.6, fallback=0.3, floor=0.05)
    assert loose["dent"] == pytest.approx(0.375)
    # no threshold reaches precision 1.01: the best F1 instead; none below the floor
    assert choose_box_thresholds(curves, "precision", 1.01, 0.3, 0.05)["dent"] == 0.375
    assert choose_box_thresholds(curves, "f1", 0.7, 0.3, floor=0.75)["dent"] == 0.75
    assert point_at(dent, 0.85) == {"precision": 1.0, "recall": 0.5}
    assert point_at(dent, 0.95) == {"precision": None, "recall": 0.0}
    # the IoU asked for decides the hit: the second dent box overlaps its truth at 9/11
    assert box_curves(truths, found, ["dent", "scratch"], iou=0.9)["dent"]["recall"][-1] == 0.5
    with pytest.raises(ValueError, match="detect.box_rule"):
        choose_box_thresholds(curves, "youden", 0.7, 0.3, 0.05)


def test_calibrated_scores_call_each_class_at_its_own_threshold():
    cuts = np.array([0.2, 0.2, 0.2, 0.8])
    assert calibrated_box_scores(np.array([0.1, 0.2, 0.6, 0.9]), cuts).tolist() == pytest.approx(
        [0.25, 0.5, 0.75, 0.75]
    )
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=float)
    # a dent at 0.4 under its threshold 0.6; a scratch at 0.3 over its threshold 0.25
    call = decide_detect(
        "a.png",
        boxes[:2],
        np.array([0.4, 0.3]),
        np.array([0, 1]),
        ["dent", "scratch"],
        0.5,
        [0.6, 0.25],
    )
    assert not call.ok and call.label == "scratch"
    assert [r.label for r in call.regions] == ["scratch"] and len(call.boxes) == 2
    assert call.ng_score == pytest.approx(0.5 + 0.5 * 0.05 / 0.75)
    # without class thresholds the raw scores meet the one threshold: the dent is called
    plain = decide_detect(
        "a.png", boxes[:2], np.array([0.4, 0.3]), np.array([0, 1]), ["dent", "scratch"], 0.35
    )
    assert plain.label == "dent" and [r.label for r in plain.regions] == ["dent"]
    below = decide_detect(
        "b.png", boxes[2:], np.array([0.5]), np.array([0]), ["dent", "scratch"], 0.5, [0.6, 0.25]
    )
    assert below.ok and below.regions == [] and below.ng_score < 0.5


def test_a_detect_run_finds_the_drawn_boxes(detect_run):
    run_dir, result = detect_run
    with open(run_dir / "history.csv") as history:
        losses = [float(row["train_loss"]) for row in csv.DictReader(history)]
    assert losses[-1] < 0.6 * losses[0]  # training reduced the loss
    assert result["map_50"] >= 0.6  # spots and bars on a plain surface
    assert result["ap_50"]["spot"] >= 0.6
    assert result["box_recall"] >= 0.5
    low, high = result["intervals"]["box_recall"]  # resampled test images
    assert 0 <= low <= result["box_recall"] <= high <= 1
    assert (
        "map_50" not in result["intervals"] and "mAP has no interval" in result["interval_method"]
    )
    assert (run_dir / "report.html").read_text().count("AP@0.5") >= 1
    # each class's box threshold chosen on validation, kept by the bundle
    meta = json.loads((run_dir / "bundle" / "bundle.json").read_text())
    assert set(meta["box_thresholds"]) == set(result["classes"]) == set(result["box_points"])
    assert all(0.05 <= t < 1 for t in meta["box_thresholds"].values())
    assert meta["box_thresholds"] == result["box_thresholds"]
    assert meta["threshold"] == result["threshold"] and 0 < meta["threshold"] <= 1
    assert "box threshold" in (run_dir / "report.html").read_text()
    predictions = (run_dir / "predictions.csv").read_text().splitlines()
    assert len(predictions) == result["images"] + 1


@pytest.mark.numerics
def test_the_bundle_gives_the_run_numbers_through_the_inspector(detect_run, parts):
    run_dir, result = detect_run
    evaluated = evaluate_bundle(run_dir, parts, split_manifest=run_dir / "split.json")
    for key in ("map_50", "map", "box_recall", "box_precision", "ng_recall"):
        assert evaluated[key] == pytest.approx(result[key], rel=1e-6, abs=1e-9), key
    inspector = Inspector(run_dir)
    spotted = [p for p in inspector.predict(sorted(parts.glob("JPEGImages/*.png"))) if not p.ok]
    assert spotted and all(p.regions and p.label == p.regions[0].label for p in spotted)
    assert {r.label for p in spotted for r in p.regions} <= {"spot", "scratch"}


@pytest.mark.numerics
def test_onnx_export_gives_the_same_boxes(detect_run, parts):
    """Both backends keep the same boxes, matched by class, IoU >= 0.9 and score within the
    export tolerance (their order may differ where scores differ by 1e-7 on another CPU);
    a box only one side kept sits at the score floor, the top-k cut or an NMS near-tie."""
    run_dir, _ = detect_run
    export_onnx(run_dir)
    images = sorted(parts.glob("JPEGImages/*.png"))[:24]
    check = check_export(run_dir, images)
    assert check["passed"] and check["boxes_disagree"] == [], check
    meta = Inspector(run_dir).meta
    torch_boxes = list(Inspector(run_dir, "torch").predict(images))
    onnx_boxes = list(Inspector(run_dir, "onnx").predict(images))
    matched = 0
    for a, b in zip(torch_boxes, onnx_boxes, strict=True):
        assert a.image == b.image
        only_a, only_b = box_differences(
            a.boxes, b.boxes, meta["score_floor"], meta["max_boxes"], meta["nms_iou"]
        )
        assert only_a == only_b == [], a.image
        pairs, _, _ = match_boxes(a.boxes, b.boxes)
        matched += len(pairs)
        for r, s in pairs:
            assert [r.x, r.y, r.width, r.height] == pytest.approx(
                [s.x, s.y, s.width, s.height], abs=0.11
            )
    assert matched >= 24  # boxes were compared, not two empty lists


@pytest.mark.numerics
def test_flip_tta_makes_the_detector_mirror_with_its_image(detect_run, parts, tmp_path):
    """eval.tta=flips for a detector (each image seen as its four flips, each view's boxes
    flipped back and pooled before NMS): the bundle's boxes on a mirrored image are its
    boxes on the image, mirrored; it still finds the drawn boxes; ONNX exports the views
    in its graph."""
    import shutil

    from PIL import Image

    run_dir, result = detect_run
    tta = tmp_path / "tta"
    shutil.copytree(run_dir, tta)
    meta_file = tta / "bundle" / "bundle.json"
    meta = json.loads(meta_file.read_text())
    assert meta["tta"] == "none"  # the run's own bundle sees each image once
    meta_file.write_text(json.dumps({**meta, "tta": "flips"}))
    evaluated = evaluate_bundle(tta, parts, split_manifest=run_dir / "split.json")
    assert evaluated["map_50"] >= min(0.6, result["map_50"] - 0.1)
    assert evaluated["box_recall"] >= 0.5
    images = sorted(parts.glob("JPEGImages/*.png"))[:12]
    mirrored = []
    for image in images:
        mirrored.append(tmp_path / f"mirrored-{image.name}")
        Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored[-1])
    inspector = Inspector(tta, "torch")
    compared = 0
    for seen, flipped in zip(inspector.predict(images), inspector.predict(mirrored), strict=True):
        width = Image.open(seen.image).width
        back = [
            Region(width - b.x - b.width, b.y, b.width, b.height, b.area, b.peak, b.label)
            for b in flipped.boxes
        ]
        pairs, only_seen, only_back = match_boxes(seen.boxes, back, tolerance=1e-3)
        # a box only one side keeps sits at a near-tie of the floor, top-k or NMS
        assert len(only_seen) + len(only_back) <= 1, seen.image
        compared += len(pairs)
    assert compared >= 12
    export_onnx(tta)
    check = check_export(tta, images)
    assert check["passed"], check


def test_weighted_box_fusion_averages_each_views_best_box():
    """fuse_views on a hand-worked case: the kept box (view 0, 0.8) and view 1's best box
    of its class overlapping it (0.4; view 1's better box of another class and its box
    that overlaps too little are not taken, nor view 0's weaker duplicate) -> their
    score-weighted mean, scored (0.8 + 0.4) / 2 views."""
    from defectkit.models.detector import fuse_views

    kept = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor(
        [
            [
                [0.0, 0.0, 10.0, 10.0],  # the kept box itself, view 0
                [1.0, 0.0, 11.0, 10.0],  # view 0, weaker: its view's best is the kept box
                [2.0, 0.0, 12.0, 10.0],  # view 1, IoU 8/12: taken
                [0.0, 0.0, 10.0, 10.0],  # view 1, another class
                [6.0, 0.0, 16.0, 10.0],  # view 1, IoU 4/16: too little
            ]
        ]
    )
    scores = torch.tensor([[0.8, 0.7, 0.4, 0.9, 0.6]])
    labels = torch.tensor([[2, 2, 2, 1, 2]])
    view = torch.tensor([[0, 0, 1, 1, 1]])
    one = (torch.tensor([0]), 1)  # the kept box's image, of one
    fused, score = fuse_views(
        kept, torch.tensor([2]), boxes, scores, labels, view, 2, 0.6, 0.05, *one
    )
    expected = (0.8 * torch.tensor([0.0, 0, 10, 10]) + 0.4 * torch.tensor([2.0, 0, 12, 10])) / 1.2
    assert fused[0].tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    assert score.tolist() == pytest.approx([0.6], rel=1e-6)
    # a box no other view finds keeps its place and half its score
    alone, half = fuse_views(
        kept,
        torch.tensor([2]),
        boxes[:, :2],
        scores[:, :2],
        labels[:, :2],
        view[:, :2],
        2,
        0.6,
        0.05,
        *one,
    )
    assert alone[0].tolist() == pytest.approx([0.0, 0, 10, 10], abs=1e-6)
    assert half.tolist() == pytest.approx([0.4], rel=1e-6)
    # two kept boxes of one image: view 1's box overlaps both by 0.6 or more and counts
    # for the one it overlaps most only; the other keeps half its score
    pair = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.5, 0.0, 11.5, 10.0]])
    shared = torch.tensor([[[0.0, 0, 10, 10], [1.5, 0, 11.5, 10], [1.0, 0, 11, 10]]])
    fused, score = fuse_views(
        pair,
        torch.tensor([0, 0]),
        shared.expand(2, -1, -1),
        torch.tensor([[0.8, 0.5, 0.9]]).expand(2, -1),
        torch.zeros(2, 3, dtype=torch.int64),
        torch.tensor([[0, 0, 1]]).expand(2, -1),
        2,
        0.6,
        0.05,
        torch.tensor([0, 0]),
        1,
    )
    # IoU of [1, 11] with [0, 10]: 9/11; with [1.5, 11.5]: 9.5/10.5 -> the second kept box
    assert score.tolist() == pytest.approx([0.4, 0.7], rel=1e-6)
    assert fused[0].tolist() == pytest.approx([0.0, 0, 10, 10], abs=1e-6)


def test_wbf_tta_fuses_the_boxes_nms_keeps_and_exports(detect_run, parts, tmp_path):
    """detect.tta_merge=wbf: the same boxes as the flips' pooled NMS (each within IoU 0.5
    of one, one to one), none scored above it (a mean over the views), the drawn boxes
    still found, and the fusion inside the ONNX graph."""
    import shutil

    from defectkit.bundle import read_meta
    from defectkit.tasks.detect import deploy

    run_dir, result = detect_run
    wbf = tmp_path / "wbf"
    shutil.copytree(run_dir, wbf, ignore=shutil.ignore_patterns("*.onnx"))
    meta_file = wbf / "bundle" / "bundle.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "tta": "flips", "tta_merge": "wbf"}))
    evaluated = evaluate_bundle(wbf, parts, split_manifest=run_dir / "split.json")
    assert evaluated["map_50"] >= min(0.6, result["map_50"] - 0.1)
    meta = read_meta(wbf)
    model = deploy.load_model(Path(meta["folder"]), meta)
    from PIL import Image

    inspector = Inspector(wbf, "torch")
    paths = sorted(parts.glob("JPEGImages/*.png"))[:4]
    images = torch.as_tensor(
        np.stack([inspector._input(Image.open(p).convert("RGB"), None) for p in paths])
    )
    # a floor that leaves a few boxes per image, none at the max_boxes cut
    rules = {"score_floor": 0.3, "nms_iou": meta["nms_iou"], "max_boxes": meta["max_boxes"]}
    with torch.no_grad():
        nms = deploy.graph(model, images, views=4, merge="nms", **rules)
        fused = deploy.graph(model, images, views=4, merge="wbf", **rules)
    assert len(nms[0]) == len(fused[0]) > 0
    compared = 0
    for i in range(4):
        a, b = nms[1][nms[0] == i], fused[1][fused[0] == i]
        if not 0 < len(a) < meta["max_boxes"]:  # at the cut, fused scores keep other boxes
            continue
        overlap = box_iou(a, b)
        assert (overlap.max(1).values >= 0.5).all() and (overlap.max(0).values >= 0.5).all()
        compared += len(a)
    assert compared > 0
    assert fused[2].max() <= nms[2].max() + 1e-6
    export_onnx(wbf)
    check = check_export(wbf, sorted(parts.glob("JPEGImages/*.png"))[:12])
    assert check["passed"], check


# an import hook that refuses torch (and what stands on it), as on a line PC without it
WITHOUT_TORCH = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm", "safetensors"):
            raise ImportError(f"{name} is not installed here")

sys.meta_path.insert(0, Refuse())
"""


@pytest.mark.numerics
def test_onnx_predict_of_a_detector_runs_without_torch(detect_run, parts, tmp_path):
    """`defectkit predict --backend onnx` on a line PC that has ONNX Runtime and no torch:
    it inspects every image, and calls the boxes the torch backend calls (matched by class,
    IoU and score; a box within the score tolerance of its threshold may fall either way)."""
    run_dir, _ = detect_run
    export_onnx(run_dir)
    images = sorted(parts.glob("JPEGImages/*.png"))[:12]
    out = tmp_path / "onnx.jsonl"
    args = ["predict", str(run_dir), *map(str, images), "--backend", "onnx", "--out", str(out)]
    script = WITHOUT_TORCH + (
        "from defectkit.cli import main\n"
        f"code = main({args!r})\n"
        "assert not [m for m in sys.modules if m.startswith('torch')], 'torch was imported'\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in rows] == [str(p) for p in images]
    meta = Inspector(run_dir).meta
    called = 0
    for row, eager in zip(rows, Inspector(run_dir, "torch").predict(images), strict=True):
        onnx_regions = [Region(**r) for r in row["regions"]]
        only_torch, only_onnx = box_differences(
            eager.regions, onnx_regions, eager.threshold, meta["max_boxes"], meta["nms_iou"]
        )
        assert only_torch == only_onnx == [], row["image"]
        assert row["ok"] == eager.ok or abs(eager.ng_score - eager.threshold) <= 1e-4
        called += len(onnx_regions)
    # boxes were called and compared, not two empty lists (how many depends on the OK/NG
    # threshold the tiny model's validation gives: 5 of these 12 images' boxes on the
    # portable kernels, more on vectorised ones)
    assert called >= 3


@pytest.mark.numerics
def test_a_faster_rcnn_learns_the_boxes_and_exports_as_one_graph(parts, tmp_path):
    """detect.arch=faster_rcnn trains through the same loop (its four losses logged), finds
    the drawn spots after 6 epochs, and its ONNX file proposes, pools and selects boxes on
    its own: the same boxes as torch, matched by class and IoU, the same OK/NG calls."""
    run_dir, result = defectkit.train(
        None,
        [
            *DETECT,
            "train.epochs=6",
            "detect.arch=faster_rcnn",
            f"data.root={parts}",
            f"out_dir={tmp_path}",
            "name=frcnn",
        ],
    )
    with open(run_dir / "history.csv") as history:
        columns = next(csv.DictReader(history)).keys()
    assert {"train_loss_objectness_loss", "train_loss_classifier_loss"} <= set(columns)
    assert result["ap_50"]["spot"] >= 0.5  # untrained: about 0
    assert json.loads((run_dir / "bundle" / "bundle.json").read_text())["arch"] == "faster_rcnn"
    export_onnx(run_dir)
    check = check_export(run_dir, sorted(parts.glob("JPEGImages/*.png"))[:12])
    assert check["passed"] and check["boxes_disagree"] == [], check
    assert check["decisions_disagree"] == []


def test_boxes_come_in_one_order_whatever_the_noise_in_their_scores():
    """Three boxes whose scores differ by 1e-7 (what another CPU kernel gives) sort by class
    and position, in every order they arrive in; a clear score difference still leads."""
    from itertools import permutations

    from defectkit.predictions import decide_detect

    boxes = np.array([[30, 0, 40, 10], [0, 0, 10, 10], [10, 0, 20, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.0765601, 0.0765600, 0.0765602, 0.5])
    labels = np.array([1, 1, 0, 1])
    seen = set()
    for order in permutations(range(4)):
        o = list(order)
        noisy = scores[o] + np.random.default_rng(len(seen)).normal(0, 1e-7, 4)
        p = decide_detect("x", boxes[o], noisy, labels[o], ["crack", "spot"], 0.3)
        seen.add(tuple((r.label, r.x) for r in p.boxes))
    assert seen == {(("spot", 50.0), ("crack", 10.0), ("spot", 0.0), ("spot", 30.0))}


def test_box_matching_pairs_the_same_boxes_and_explains_only_near_ties():
    from defectkit.predictions import Region

    def box(x, score, label="spot", width=10.0):
        return Region(x, 0.0, width, 10.0, int(width * 10), score, label)

    a = [box(0, 0.9), box(20, 0.5), box(40, 0.06, "crack")]
    b = [box(20.2, 0.50004), box(0.1, 0.90002)]  # another order, 1e-4 noise
    pairs, left_a, left_b = match_boxes(a, b)
    assert {(p.x, q.x) for p, q in pairs} == {(0, 0.1), (20, 20.2)}
    assert left_a == [a[2]] and left_b == []
    # the crack at 0.06 is 0.01 above a floor of 0.05: not a near-tie, a real difference
    assert box_differences(a, b, floor=0.05, most=100, nms_iou=0.5) == ([a[2]], [])
    # at a floor of 0.06 it may fall either side
    assert box_differences(a, b, floor=0.06, most=100, nms_iou=0.5) == ([], [])
    # a box of the wrong class or far away is never matched
    assert match_boxes([box(0, 0.9)], [box(0, 0.9, "crack")])[0] == []
    assert match_boxes([box(0, 0.9)], [box(5, 0.9)])[0] == []  # IoU 1/3
    # NMS kept one of two overlapping near-tied boxes on each side
    twins = box_differences([box(0, 0.7)], [box(2, 0.70001)], 0.05, 100, 0.5)
    assert twins == ([], [])


def test_a_dataset_without_boxes_is_refused_with_the_fix(synthetic_root, tmp_path):
    with pytest.raises(DatasetError, match="no image has a box"):
        defectkit.train(None, ["task=detect", f"data.root={synthetic_root}", f"out_dir={tmp_path}"])


def test_the_operator_page_draws_labelled_boxes(detect_run, parts):
    """Served, a detect bundle's called boxes appear on the operator page over the image,
    each tagged with its class and score, as many as /inspect returns."""
    import httpx
    from playwright.sync_api import sync_playwright

    from tests.test_serve import _browser, _chromium, _serve

    run_dir, _ = detect_run
    _chromium()
    for url in _serve(run_dir / "bundle"):
        called = None
        for path in sorted(parts.glob("JPEGImages/*.png")):
            answer = httpx.post(
                url + "inspect", files=[("files", (path.name, path.read_bytes()))]
            ).json()["results"][0]
            if answer["regions"]:
                called = path, answer
                break
        assert called is not None, "no image got a box"
        path, answer = called
        with sync_playwright() as p:
            browser = _browser(p)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function(
                "document.getElementById('model').textContent.includes('detect')"
            )
            page.set_input_files("#pick", [str(path)])
            page.wait_for_function("document.querySelectorAll('#stage .box').length > 0")
            tags = page.locator("#stage .box .tag").all_inner_texts()
            browser.close()
        assert len(tags) == len(answer["regions"])
        assert tags[0].startswith(answer["regions"][0]["label"] + " ")


def test_predict_writes_boxes_as_coco_json_and_inspect_counts_them(
    detect_run, parts, tmp_path, capsys
):
    from defectkit.cli import main

    run_dir, _ = detect_run
    images = sorted(parts.glob("JPEGImages/*.png"))[:6]
    out, coco = tmp_path / "p.jsonl", tmp_path / "boxes.json"
    assert (
        main(["predict", str(run_dir), *map(str, images), "--out", str(out), "--coco", str(coco)])
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    written = json.loads(coco.read_text())
    assert [i["file_name"] for i in written["images"]] == [str(p) for p in images]
    assert [c["name"] for c in written["categories"]] == ["scratch", "spot"]
    called = [a for a in written["annotations"] if a["called"]]
    assert len(called) == sum(len(r["regions"]) for r in rows)
    assert all(a["score"] >= rows[a["image_id"] - 1]["threshold"] for a in called)

    assert main(["data", "inspect", str(parts), "--out", str(tmp_path / "inspect")]) == 0
    printed = capsys.readouterr().out
    boxes = sum(
        1 for xml in parts.glob("Annotations/*.xml") for _ in xml.read_text().split("<object>")[1:]
    )
    assert f"boxes: {boxes} (0 polygons)" in printed
    summary = json.loads((tmp_path / "inspect" / "summary.json").read_text())
    assert summary["boxes"]["small"] + summary["boxes"]["medium"] == boxes


def test_a_paired_detector_takes_each_image_with_its_template(tmp_path):
    """DeepPCB-style pairs: the bundle records a 6-channel input, the Inspector refuses an
    image without its template and inspects it with one."""
    from defectkit.data.synthetic import make_paired_set

    root = make_paired_set(tmp_path / "pcb", count=16, size=64)
    run_dir, result = defectkit.train(
        "deeppcb_detect",
        [
            f"data.root={root}",
            "data.image_size=64",
            "train.epochs=1",
            "train.batch_size=8",
            f"out_dir={tmp_path}",
            "name=paired",
        ],
    )
    meta = json.loads((run_dir / "bundle" / "bundle.json").read_text())
    assert meta["in_channels"] == 6 and meta["reference"] and meta["match_iou"] == 0.33
    inspector = Inspector(run_dir)
    tested = sorted(root.rglob("*_test.jpg"))[:2]
    with pytest.raises(ValueError, match="give references"):
        list(inspector.predict(tested))
    templates = [p.with_name(p.name.replace("_test", "_temp")) for p in tested]
    assert len(list(inspector.predict(tested, references=templates))) == 2
    assert result["images"] == len(json.loads((run_dir / "split.json").read_text())["test"])


def test_a_paired_detector_starts_from_the_image_and_its_difference():
    """detect.reference_start=difference: the 6-channel first convolution is [2W, -W], so
    an image over an identical template gives the pretrained response of the image alone
    and a change from the template adds the same filters on the difference; mean halves
    the filters over both."""
    from defectkit.config import DetectConfig, ModelConfig
    from defectkit.models.detector import build_detector

    def stem(model):
        return model.backbone.trunk.state_dict()["conv_stem.weight"]

    rgb, _, _ = build_detector(ModelConfig(), DetectConfig(), 2, 64, 3, pretrained=True)
    paired, info, _ = build_detector(ModelConfig(), DetectConfig(), 2, 64, 6, pretrained=True)
    w3, w6 = stem(rgb), stem(paired)
    assert info["first_conv_adapted"] == ["conv_stem.weight"]
    assert torch.equal(w6[:, :3], 2 * w3) and torch.equal(w6[:, 3:], -w3)
    image, change = torch.randn(1, 3, 16, 16), torch.zeros(1, 3, 16, 16)
    change[..., 4:8, 4:8] = 1.0
    conv = lambda x, w: torch.nn.functional.conv2d(x, w)  # noqa: E731
    same = conv(torch.cat([image, image], 1), w6)
    assert torch.allclose(same, conv(image, w3), atol=1e-5 * float(same.abs().max()))
    changed = conv(torch.cat([image + change, image], 1), w6)
    expected = conv(image + change, w3) + conv(change, w3)
    assert torch.allclose(changed, expected, atol=1e-5 * float(changed.abs().max()))
    mean, _, _ = build_detector(
        ModelConfig(), DetectConfig(reference_start="mean"), 2, 64, 6, pretrained=True
    )
    assert torch.allclose(stem(mean), torch.cat([w3, w3], 1) / 2)
    with pytest.raises(ValueError, match="reference_start"):
        build_detector(
            ModelConfig(), DetectConfig(reference_start="sum"), 2, 64, 6, pretrained=True
        )


def test_tile_windows_hold_their_boxes(tmp_path):
    """data.resize=tile: each training item is a window at full resolution, the boxes it
    holds moved into it (a box cut to less than half its area is dropped)."""
    from PIL import Image

    image = np.zeros((100, 200), dtype=np.uint8)
    image[40:50, 150:170] = 255
    Image.fromarray(image).save(tmp_path / "wide.png")
    sample = Sample(tmp_path / "wide.png", "dent", boxes=(Box(150, 40, 170, 50, "dent"),))
    dataset = DetectionDataset(
        [sample], ["dent"], size=64, mean=[0, 0, 0], std=[1, 1, 1], resize="tile", seed=0
    )
    holding = 0
    for _ in range(40):
        x, target = dataset[0]
        assert x.shape == (3, 64, 64)
        for x1, y1, x2, y2 in target["boxes"].round().int().tolist():
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
            assert x[0, y1:y2, x1:x2].mean() > 0.9  # the box is on the bright bar
            holding += 1
        if not len(target["boxes"]):
            assert x[0].sum() < 0.5 * 200  # less than half of the bar's 200 pixels
    assert holding >= 15  # about half the windows are drawn around a box


def test_tiled_boxes_report_a_defect_on_a_seam_once():
    """Windows of 64 over a 64 x 160 image start at 0, 48 and 96: a square at x 50..60 is
    in the first two. Each window's box moves to the image and the duplicate is merged."""
    from defectkit.tasks.detect.deploy import tiled_boxes

    image = np.zeros((3, 64, 160), np.float32)
    image[:, 20:30, 50:60] = 1.0

    def run(tiles):  # the graph's flat detections: the box around a window's bright pixels
        found = []
        for n, tile in enumerate(tiles):
            ys, xs = np.nonzero(tile[0] > 0.5)
            if len(xs):
                found.append((n, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]))
        return [
            np.array([n for n, _ in found], np.int64),
            np.array([box for _, box in found], np.float32).reshape(-1, 4),
            np.full(len(found), 0.9, np.float32),
            np.zeros(len(found), np.int64),
        ]

    boxes, scores, labels = tiled_boxes(run, image, 64, nms_iou=0.5, most=10)
    assert boxes.tolist() == [[50.0, 20.0, 60.0, 30.0]]
    assert scores.tolist() == [pytest.approx(0.9)] and labels.tolist() == [0]


@pytest.mark.numerics
def test_a_tiled_detector_gives_the_run_numbers_through_the_inspector(tmp_path):
    root = make_box_set(tmp_path / "large", count=24, size=160)
    run_dir, result = defectkit.train(
        None,
        [
            *DETECT,
            f"data.root={root}",
            "data.resize=tile",
            "data.image_size=64",
            "train.epochs=2",
            f"out_dir={tmp_path}",
            "name=tiled",
        ],
    )
    evaluated = evaluate_bundle(run_dir, root, split_manifest=run_dir / "split.json")
    for key in ("map_50", "box_recall", "ng_recall"):
        assert evaluated[key] == pytest.approx(result[key], rel=1e-6, abs=1e-9), key
    prediction = next(Inspector(run_dir).predict(sorted(root.glob("JPEGImages/*.png"))[:1]))
    assert all(b.x >= 0 and b.x + b.width <= 160.05 for b in prediction.boxes)


def test_warm_start_from_a_detect_run_keeps_what_it_learned(detect_run, parts, tmp_path):
    """train.init_from=<detect run>: one epoch at a tiny rate starts from the learned boxes
    (a fresh model scores about nothing after one epoch)."""
    run_dir, before = detect_run
    _, after = defectkit.train(
        None,
        [
            *DETECT,
            f"data.root={parts}",
            f"train.init_from={run_dir}",
            "train.epochs=1",
            "train.lr=0.00001",
            "train.warmup_epochs=0",
            f"out_dir={tmp_path}",
            "name=warm",
        ],
    )
    assert "classes kept" in after["weights"]["warm_start"]
    assert after["map_50"] >= 0.8 * before["map_50"]
    with pytest.raises(ValueError, match="backbone"):
        defectkit.train(
            None,
            [
                *DETECT,
                f"data.root={parts}",
                f"train.init_from={run_dir}",
                "model.backbone=resnet18",
                "model.pretrained=false",
                f"out_dir={tmp_path}",
                "name=other",
            ],
        )


@pytest.mark.parametrize("arch", ARCHS)
def test_a_warm_start_with_other_classes_starts_every_class_layer_anew(arch):
    """Warm-starting from a detector of the same architecture and class count but other
    classes takes everything but the layers whose outputs are classes (FCOS / RetinaNet's
    class scores; Faster R-CNN's class scores and per-class boxes); the same classes take
    all of it."""
    config = DetectConfig(arch=arch, fpn_channels=32, head_convs=1)
    own, theirs = (
        build_detector(
            ModelConfig(backbone="resnet18", pretrained=False), config, 3, 64, pretrained=False
        )[0].state_dict()
        for _ in range(2)
    )
    other = transferable(own, theirs, same_classes=False)
    left = set(own) - set(other)
    assert left and all(any(layer in k for layer in CLASS_LAYERS) for k in left)
    assert any(k.startswith("backbone.trunk.") for k in other)
    assert set(transferable(own, theirs, same_classes=True)) == set(own)


def test_frozen_stages_keep_their_imagenet_weights_and_statistics(parts, tmp_path):
    """detect.frozen_stages=2: the trunk's stem and first two stages end the run as loaded
    (weights and batch-norm statistics), the stages after them and the heads trained; a
    stage count the trunk does not have is refused."""
    from defectkit.config import ConfigError, DetectConfig, ModelConfig, load_config
    from defectkit.data.formats import read_dataset
    from defectkit.engine.train import load_checkpoint
    from defectkit.models.detector import build_detector, frozen_stage_parameters
    from defectkit.tasks.settings import check_settings

    run_dir, _ = defectkit.train(
        None,
        [
            *DETECT,
            f"data.root={parts}",
            "detect.frozen_stages=2",
            "train.epochs=1",
            "train.warmup_epochs=0",
            f"out_dir={tmp_path}",
            "name=frozen",
        ],
    )
    loaded, _, _ = build_detector(ModelConfig(), DetectConfig(), 2, 96, pretrained=True)
    before = loaded.state_dict()
    after = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    assert_first_two_stages_as_loaded(before, after, "backbone.trunk.")
    assert len(frozen_stage_parameters(loaded, 2)) < len(list(loaded.backbone.trunk.parameters()))
    with pytest.raises(
        ValueError, match=r"frozen_stages=5: the backbone has 5 .*detect\.freeze_epochs"
    ):
        frozen_stage_parameters(loaded, 5)
    negative = load_config(None, [*DETECT, f"data.root={parts}", "detect.frozen_stages=-1"])
    with pytest.raises(ConfigError, match=r"detect\.frozen_stages=-1 is negative"):
        check_settings(negative, read_dataset(parts))


def test_boxes_found_on_each_view_map_back_to_the_image():
    """unview_boxes undoes data.transforms.view for all eight flips and turns: a box drawn
    on an image, found on a view of it, lands on the drawn box again."""
    from defectkit.data.transforms import view
    from defectkit.tasks.detect.deploy import unview_boxes

    size = 32
    drawn = torch.zeros(size, size)
    drawn[5:9, 20:30] = 1  # rows 5..8, columns 20..29: the box (20, 5, 30, 9)
    for j in range(8):
        rows, columns = torch.nonzero(view(drawn, j), as_tuple=True)
        found = torch.tensor(
            [columns.min(), rows.min(), columns.max() + 1, rows.max() + 1], dtype=torch.float32
        )
        assert unview_boxes(found, j, size).tolist() == [20.0, 5.0, 30.0, 9.0], j


def test_calibrate_gives_a_detector_the_box_thresholds_of_another_rule(detect_run, tmp_path):
    """`calibrate` a copy of the finished run with box_rule=precision at a low target: each
    class's threshold is where that rule puts it on the same validation boxes (the most
    recall at precision >= the target, so at least F1's validation recall), the boxes the
    bundle keeps are the same (mAP unchanged), and the bundle carries the new thresholds."""
    import shutil

    run_dir, before = detect_run
    copy = tmp_path / "d"
    shutil.copytree(run_dir, copy)
    moved, after = defectkit.calibrate(copy, ["detect.box_rule=precision", "detect.box_target=0.5"])
    assert moved == copy and after["box_rule"] == "precision (target 0.5)"
    assert after["map_50"] == pytest.approx(before["map_50"], rel=1e-6, abs=1e-9)
    assert after["epochs_run"] == before["epochs_run"]
    checked = 0
    for name, point in after["val_box_points"].items():
        old = before["val_box_points"][name]
        if old["precision"] is not None and old["precision"] >= 0.5:
            assert point["precision"] >= 0.5 and point["recall"] >= old["recall"] - 1e-12
            checked += 1
    assert checked >= 1  # a class whose F1 point already had precision >= 0.5
    meta = json.loads((copy / "bundle" / "bundle.json").read_text())
    assert meta["box_thresholds"] == after["box_thresholds"]
    kept = json.loads((copy / "before" / "1" / "metrics.json").read_text())
    assert kept["box_thresholds"] == pytest.approx(before["box_thresholds"])


def test_calibration_and_augmentation_settings_out_of_range_are_refused_before_training(
    parts, tmp_path
):
    from defectkit.config import ConfigError, load_config
    from defectkit.tasks import get_task

    config = load_config(
        None,
        [
            *DETECT,
            f"data.root={parts}",
            f"out_dir={tmp_path}",
            "detect.box_rule=recall",
            "detect.box_target=1.5",
            "eval.threshold_rule=f1",
            "detect.mosaic=1.5",
            "detect.mosaic_off_epochs=-1",
        ],
    )
    with pytest.raises(ConfigError) as caught:
        get_task("detect")(config, tmp_path, False)
    message = str(caught.value)
    assert "detect.mosaic=1.5 is outside [0, 1]" in message
    assert "detect.mosaic_off_epochs=-1 is outside 0..train.epochs" in message
    assert "5 setting(s)" in message and "detect.box_rule='recall' is not one of" in message
    assert "detect.box_target=1.5 is outside (0, 1]" in message
    assert "eval.threshold_rule='f1' is not one of" in message
    assert not (tmp_path / "checkpoints").exists()
