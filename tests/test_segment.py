"""The segment task: losses and metrics worked by hand, masks kept aligned, the encoder's
first convolution extended for a reference image, and runs end to end on synthetic data."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectkit.config import ModelConfig, SegmentConfig, load_config
from defectkit.data.samples import Box, Sample
from defectkit.data.segmentation import read_mask, resize_pair
from defectkit.data.synthetic import make_paired_set
from defectkit.engine.losses import MaskLoss, lovasz_hinge, soft_dice_loss
from defectkit.metrics import SegmentationScores
from defectkit.predictions import drop_small_regions
from defectkit.runtime.inspector import Inspector
from defectkit.tasks import get_task
from tests.frozen import assert_first_two_stages_as_loaded
from tests.parity import assert_same_mask_call


def test_mask_losses():
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :2] = 1
    perfect = (target * 2 - 1) * 20  # logits: +20 inside, -20 outside
    assert soft_dice_loss(perfect, target) < 1e-6
    assert MaskLoss("bce")(perfect, target) < 1e-6
    assert MaskLoss("tversky")(perfect, target) < 1e-6
    assert MaskLoss("focal")(-perfect, target) > MaskLoss("focal")(torch.zeros_like(target), target)
    # dice of an all-negative prediction: 1 - 1 / (0 + 4 + 1)
    assert soft_dice_loss(torch.full_like(target, -20.0), target) == pytest.approx(0.8, abs=1e-4)
    # an image left out by its weight does not count
    assert MaskLoss("bce")(perfect, target, torch.zeros(1)) == 0
    # Lovasz hinge: zero when every pixel is right by the margin; all-zero logits are one
    # unit of hinge error everywhere, weighted to the full Jaccard loss of 1
    assert MaskLoss("lovasz")(perfect, target) == 0
    assert MaskLoss("lovasz")(torch.zeros_like(target), target) == pytest.approx(1.0)
    # by hand: mask [1, 0], logits [1, 0]: hinge errors 0 and 1; sorted worst first the
    # Jaccard losses are 1/2 then 1, so weights 1/2, 1/2 and the loss 1 x 1/2
    assert lovasz_hinge(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown segment.loss 'iou'"):
        MaskLoss("iou")


def test_lovasz_loss_drives_logits_to_the_mask():
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 8, 8) > 0.7).float()
    target[1] = 0  # an image without defects
    logits = torch.zeros_like(target, requires_grad=True)
    # the Lovasz weights sum to at most 1 over the pixels in error: small steps per pixel
    optimizer = torch.optim.SGD([logits], lr=10)
    loss_fn = MaskLoss("lovasz")
    first = float(loss_fn(logits, target).detach())
    for _ in range(100):
        loss = loss_fn(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss_fn(logits, target).detach()) < 0.1 * first
    assert torch.equal(logits.detach() > 0, target > 0)


def test_segmentation_scores_by_hand():
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True  # 4 defect pixels
    predicted = np.zeros((4, 4), bool)
    predicted[:2, :3] = True  # 6 predicted: tp 4, fp 2, fn 0
    scores = SegmentationScores(0.33)
    assert scores.add(truth, predicted, "spot") == pytest.approx(4 / 6)
    scores.add(np.zeros((4, 4), bool), np.zeros((4, 4), bool), "ok")  # an OK image, kept OK
    result = scores.result()
    assert result["defect_iou"] == pytest.approx(4 / 6)
    assert result["dice"] == pytest.approx(8 / 10)
    assert result["background_iou"] == pytest.approx(26 / 28)  # tn 26 of 32 - 4 tp
    assert result["miou"] == pytest.approx((4 / 6 + 26 / 28) / 2)
    assert result["ng_recall"] == 1.0 and result["ok_specificity"] == 1.0
    assert result["region_recall"] == 1.0 and result["region_precision"] == 1.0  # box IoU 4/6
    assert result["per_label_iou"] == {"spot": pytest.approx(4 / 6)}


def test_region_matching_uses_the_iou_rule():
    truth = np.zeros((10, 10), bool)
    truth[0:4, 0:4] = True  # 16 px box
    predicted = np.zeros((10, 10), bool)
    predicted[0:2, 0:2] = True  # box IoU 4/16 = 0.25 < 0.33: not found
    predicted[8:10, 8:10] = True  # a false region
    result = SegmentationScores(0.33)
    result.add(truth, predicted)
    out = result.result()
    assert out["region_recall"] == 0.0 and out["region_precision"] == 0.0
    assert out["regions"] == {"true": 1, "predicted": 2}
    assert drop_small_regions(predicted, 5).sum() == 0


def test_box_ious_by_hand():
    from defectkit.metrics import box_ious

    # (y1, x1, y2, x2): a 4x4 box against itself, its quarter, a half-overlapping twin and
    # a far one; union of the twins 16 + 16 - 8 = 24
    ious = box_ious([(0, 0, 4, 4)], [(0, 0, 4, 4), (0, 0, 2, 2), (0, 2, 4, 6), (8, 8, 9, 9)])
    assert ious.shape == (1, 4)
    assert ious[0] == pytest.approx([1.0, 0.25, 8 / 24, 0.0])
    assert box_ious([], [(0, 0, 1, 1)]).shape == (0, 1)


def test_boxes_become_masks_and_pad_keeps_them_aligned(tmp_path):
    from PIL import Image

    Image.new("L", (40, 20)).save(tmp_path / "a.png")
    mask = read_mask(Sample(tmp_path / "a.png", "defect", boxes=(Box(10, 5, 20, 10),)))
    assert mask.shape == (20, 40) and mask.sum() == 50 and mask[5:10, 10:20].all()
    image = torch.zeros(3, 20, 40)
    image[:, 5:10, 10:20] = 1.0
    x, y = resize_pair(image, torch.from_numpy(mask), 80, "pad")
    assert x.shape == (3, 80, 80) and y.shape == (80, 80)
    assert y[:20].sum() == 0 and y[60:].sum() == 0  # padding is background
    assert torch.equal(x[0] > 0.5, y)  # image and mask moved together


def test_first_convolution_is_extended_for_a_reference_image():
    from defectkit.models.segmenter import build_segmenter

    config = SegmentConfig(encoder_depth=3)
    rgb, _, _ = build_segmenter(ModelConfig(), config, 3, pretrained=True)
    paired, info, prep = build_segmenter(ModelConfig(), config, 6, pretrained=True)
    first = "conv_stem.weight"
    w3, w6 = rgb.net.encoder.model.state_dict()[first], paired.net.encoder.model.state_dict()[first]
    assert w6.shape[1] == 6 and info["first_conv_adapted"] == [first]
    assert torch.allclose(w6[:, :3], w3 * 0.5) and torch.allclose(w6[:, 3:], w3 * 0.5)
    assert info["encoder_tensors_loaded"] > 50 and prep.mean == (0.5, 0.5, 0.5)
    masks, gate = paired(torch.zeros(2, 6, 64, 64))
    assert masks.shape == (2, 64, 64) and gate.shape == (2,)


def test_gradient_checkpointing_trains_the_same_model():
    """Recomputing the encoder's blocks (segment.grad_checkpointing) gives the gradients of
    a plain run, and its batch-norm statistics after two steps, though the recompute runs
    those layers twice a step (their momentum is set so two moves equal one)."""
    from defectkit.models.segmenter import build_segmenter

    torch.manual_seed(0)
    images = torch.randn(2, 4, 3, 64, 64)
    states = {}
    for checkpointed in (False, True):
        config = SegmentConfig(encoder_depth=3, grad_checkpointing=checkpointed)
        torch.manual_seed(1)  # the same decoder and gate initialisation
        model, _, _ = build_segmenter(ModelConfig(), config, 3, pretrained=True)
        model.train()
        torch.manual_seed(2)  # the same gate dropout
        for x in images:
            model.zero_grad()
            masks, gate = model(x)
            (masks.square().mean() + gate.mean()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        states[checkpointed] = model.state_dict(), grads
    (plain, plain_grads), (ckpt, ckpt_grads) = states[False], states[True]
    stat = "net.encoder.model.blocks.1.0.bn1.running_var"
    assert not torch.equal(plain[stat], torch.ones_like(plain[stat]))  # the statistics moved
    for name, value in plain.items():
        if value.is_floating_point():
            assert torch.allclose(ckpt[name], value, rtol=1e-4, atol=1e-5), name
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 50
    for name, grad in plain_grads.items():
        scale = grad.abs().max().item() + 1e-8
        assert (ckpt_grads[name] - grad).abs().max().item() <= 1e-3 * scale, name


def _segment(root: Path, out: Path, name: str, *extra: str):
    config = load_config(
        None,
        [
            "task=segment",
            f"data.root={root}",
            "data.image_size=64",
            f"out_dir={out}",
            f"name={name}",
            "train.epochs=6",
            "train.batch_size=8",
            "train.lr=0.003",
            "train.head_lr_mult=1",
            "segment.encoder_depth=3",
            *extra,
        ],
    )
    run_dir = out / name
    run_dir.mkdir(parents=True)
    return run_dir, get_task("segment")(config, run_dir, False)


@pytest.fixture(scope="module")
def segment_run(tiles, tmp_path_factory):
    return _segment(
        tiles,
        tmp_path_factory.mktemp("seg"),
        "s",
        "segment.freeze_epochs=1",
        "segment.frozen_stages=2",
        "train.channels_last=true",
    )


def test_frozen_stages_keep_their_imagenet_weights_and_statistics(segment_run):
    """segment.frozen_stages=2: the stem and the first two stages end the run as loaded
    (weights and batch-norm statistics), the stages after them trained."""
    from defectkit.engine.train import load_checkpoint
    from defectkit.models.segmenter import build_segmenter

    run_dir, _ = segment_run
    pretrained, _, _ = build_segmenter(
        ModelConfig(), SegmentConfig(encoder_depth=3), 3, pretrained=True
    )
    before = pretrained.state_dict()
    after = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    assert_first_two_stages_as_loaded(before, after, "net.encoder.model.")
    with pytest.raises(ValueError, match="the backbone has 3 stages.*segment.freeze_epochs"):
        pretrained.early_stage_parameters(3)


def test_segment_run_finds_synthetic_defects(segment_run):
    run_dir, result = segment_run
    assert result["without_gate"]["defect_iou"] > 0.3
    gated, plain = result["with_gate"], result["without_gate"]
    assert gated["defect_iou"] > 0.3 and "gate" in result  # 0.42 here (0.47 without it)
    # the gate only empties the masks of images it calls OK: never a region more
    assert gated["regions"]["predicted"] <= plain["regions"]["predicted"]
    assert gated["regions"]["true"] == plain["regions"]["true"]
    assert result["miou"] > 0.6 and result["ms_per_image"] > 0
    assert set(result["per_label_iou"]) <= {"Scratch", "Spot"}
    for name in (
        "metrics.json",
        "predictions.csv",
        "history.csv",
        "report.html",
        "bundle/bundle.json",
        "checkpoints/last.pt",
        "plots/masks_best.png",
    ):
        assert (run_dir / name).is_file(), name
    assert "Masks with and without the gate" in (run_dir / "report.html").read_text()


@pytest.mark.numerics
def test_inspector_and_onnx_reproduce_the_run_masks(segment_run, tmp_path):
    from defectkit.runtime.export import check_export, export_onnx

    run_dir, _ = segment_run
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))[::3]
    inspector = Inspector(run_dir)
    for row, p in zip(rows, inspector.predict([r["image"] for r in rows]), strict=True):
        assert_same_mask_call(p, row, inspector)
        assert p.heat_map.shape == p.mask.shape == (64, 64)
    bundle = tmp_path / "bundle"
    shutil.copytree(run_dir / "bundle", bundle)
    export_onnx(bundle)
    assert check_export(bundle, [r["image"] for r in rows])["passed"]


@pytest.mark.numerics
def test_eval_command_scores_a_segment_bundle_as_the_run_did(segment_run, tiles, tmp_path, capsys):
    import json

    from defectkit.cli import main

    run_dir, result = segment_run
    out = tmp_path / "e.json"
    args = ["eval", str(run_dir / "bundle"), "--data", str(tiles), "--out", str(out)]
    assert main([*args, "--split-manifest", str(run_dir / "split.json")]) == 0
    evaluated = json.loads(out.read_text())
    # the run's test part through the Inspector: the same gated masks, the same numbers
    assert evaluated["images"] == result["test_images"]
    assert evaluated["defect_iou"] == pytest.approx(result["with_gate"]["defect_iou"], abs=1e-9)
    assert evaluated["ng_recall"] == pytest.approx(result["gate"]["ng_recall"])
    assert evaluated["ok_ng_from"] == "gate"
    assert "defect IoU" in capsys.readouterr().out


def test_eval_of_a_segment_bundle_needs_masks_or_boxes(segment_run, tmp_path):
    from defectkit.runtime.evaluate import evaluate_bundle

    folder = tmp_path / "classes"
    for label in ("ok", "ng"):
        (folder / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (64, 64), (i * 50, 90, 90)).save(folder / label / f"{i}.png")
    with pytest.raises(ValueError, match="no masks or boxes"):
        evaluate_bundle(segment_run[0] / "bundle", folder)


@pytest.fixture(scope="module")
def paired_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("paired")
    root = make_paired_set(tmp_path / "pcb", count=24, size=64)
    return root, *_segment(
        root,
        tmp_path,
        "p",
        "segment.reference=true",
        "split.method=official",
        "split.val_fraction=0.15",
        "segment.gate=false",
        "segment.balance=false",
    )


def test_reference_pairs_train_and_predict_with_their_templates(paired_run):
    root, run_dir, result = paired_run
    assert result["test_images"] == 6 and result["region_recall"] is not None
    inspector = Inspector(run_dir)
    tested = sorted(root.rglob("*_test.jpg"))[:3]
    with pytest.raises(ValueError, match="give references"):
        list(inspector.predict(tested))
    templates = [p.with_name(p.name.replace("_test", "_temp")) for p in tested]
    predictions = list(inspector.predict(tested, references=templates))
    assert len(predictions) == 3 and inspector.describe()["reference"] is True


def test_reference_without_templates_is_refused(tiles, tmp_path):
    from defectkit.data.samples import DatasetError

    with pytest.raises(DatasetError, match="have no reference image"):
        _segment(tiles, tmp_path, "r", "segment.reference=true")


def test_predict_command_pairs_templates_by_name_and_writes_masks(paired_run, tmp_path):
    from defectkit.cli import main

    root, run_dir, _ = paired_run
    folder = root / "group00000" / "00000"
    code = main(
        [
            "predict",
            str(run_dir),
            str(folder),
            "--reference-from",
            "_test:_temp",
            "--out",
            str(tmp_path / "p.csv"),
            "--masks",
            str(tmp_path / "masks"),
        ]
    )
    assert code == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 1 + 24  # the templates themselves are not inspected
    assert len(list((tmp_path / "masks").glob("*.png"))) == 24


def test_eval_pairs_each_image_with_its_reference(paired_run, tmp_path):
    from defectkit.runtime.evaluate import evaluate_bundle

    root, run_dir, result = paired_run
    evaluated = evaluate_bundle(run_dir, root, split_manifest=run_dir / "split.json")
    assert evaluated["images"] == result["test_images"] == 6
    assert evaluated["defect_iou"] == pytest.approx(result["defect_iou"], abs=1e-9)
    assert evaluated["ok_ng_from"] == "mask not empty"


def test_service_takes_references_for_a_paired_model(paired_run):
    from fastapi.testclient import TestClient

    from defectkit.serve import create_app

    root, run_dir, _ = paired_run
    client = TestClient(create_app(run_dir / "bundle", workers=1))
    tested = sorted(root.rglob("*_test.jpg"))[0]
    template = tested.with_name(tested.name.replace("_test", "_temp"))
    alone = client.post("/inspect", files=[("files", (tested.name, tested.read_bytes()))])
    assert alone.status_code == 422 and "references" in alone.json()["detail"]
    paired = client.post(
        "/inspect",
        files=[
            ("files", (tested.name, tested.read_bytes())),
            ("references", (template.name, template.read_bytes())),
        ],
    )
    assert paired.status_code == 200, paired.text
    result = paired.json()["results"][0]
    assert result["label"] in ("ok", "defect") and result["ok"] == (result["label"] == "ok")


def test_ctrl_c_in_training_says_how_to_resume(tmp_path):
    from defectkit.runs import training_log

    hint = f"defectkit train --resume {tmp_path}"
    with pytest.raises(KeyboardInterrupt, match=hint), training_log(tmp_path) as writer:
        writer.add_scalar("loss", 1.0, 1)
        raise KeyboardInterrupt
    assert any((tmp_path / "tensorboard").iterdir())  # what was logged is kept


@pytest.mark.parametrize("length,size", [(640, 320), (100, 64), (64, 64), (40, 64), (321, 320)])
def test_windows_cover_the_image_and_stitch_back_exactly(length, size):
    from defectkit.data.tiles import split_tiles, stitch, tile_starts

    starts = tile_starts(length, size)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert starts[-1] + size >= length and all(s + size <= max(length, size) for s in starts)
    image = torch.rand(3, length, length + 7)
    tiles, origins = split_tiles(image, size)
    assert tiles.shape[1:] == (3, size, size)
    # each window's channel 0 stitched back is the image itself, overlaps averaged
    back = stitch(tiles[:, 0], origins, length, length + 7)
    assert torch.allclose(back, image[0], rtol=1e-5, atol=1e-6)


def test_training_windows_find_small_defects_and_pad_with_background():
    import random

    from defectkit.data.tiles import random_window

    image, mask = torch.rand(3, 300, 400), torch.zeros(300, 400, dtype=torch.bool)
    mask[250:253, 390:393] = True  # a 3-pixel pin-hole near a corner
    rng = random.Random(0)
    windows = [random_window(image, mask, 64, rng, focus=1.0) for _ in range(20)]
    assert all(w[0].shape == (3, 64, 64) and w[1].any() for w in windows)
    small_image, small_mask = torch.rand(3, 40, 50), torch.ones(40, 50, dtype=torch.bool)
    x, y = random_window(small_image, small_mask, 64, rng)
    assert x.shape == (3, 64, 64) and y[:40, :50].all() and not y[40:].any()


@pytest.fixture(scope="module")
def tiled_run(tmp_path_factory):
    """96 px tiles learnt from 64 px windows at their own resolution."""
    from defectkit.data.synthetic import make_mask_set

    tmp_path = tmp_path_factory.mktemp("tiled")
    root = make_mask_set(tmp_path / "tiles96", per_class=16, size=96)
    return _segment(root, tmp_path, "t", "data.resize=tile")


@pytest.mark.numerics
def test_a_tiled_run_predicts_at_the_images_own_size_in_every_backend(tiled_run, tmp_path):
    from defectkit.runtime.export import check_export, export_onnx

    run_dir, result = tiled_run
    assert result["without_gate"]["defect_iou"] > 0.4  # 0.69 here; 0.64 resized to 96 px
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))[::4]
    inspector = Inspector(run_dir)
    for row, p in zip(rows, inspector.predict([r["image"] for r in rows]), strict=True):
        assert p.heat_map.shape == p.mask.shape == (96, 96)  # not the 64 px window
        assert_same_mask_call(p, row, inspector)
    bundle = tmp_path / "bundle"
    shutil.copytree(run_dir / "bundle", bundle)
    export_onnx(bundle)
    assert check_export(bundle, [r["image"] for r in rows])["passed"]


@pytest.mark.numerics
def test_tiled_pairs_slide_over_image_and_template_together(tmp_path):
    from defectkit.runtime.export import check_export, export_onnx

    root = make_paired_set(tmp_path / "pcb", count=12, size=96)
    run_dir, _ = _segment(
        root,
        tmp_path,
        "tp",
        "train.epochs=1",
        "data.resize=tile",
        "segment.reference=true",
        "split.method=official",
        "split.val_fraction=0.2",
        "segment.gate=false",
    )
    tested = sorted(root.rglob("*_test.jpg"))[:2]
    templates = [p.with_name(p.name.replace("_test", "_temp")) for p in tested]
    predictions = list(Inspector(run_dir).predict(tested, references=templates))
    assert [p.mask.shape for p in predictions] == [(96, 96)] * 2
    export_onnx(run_dir / "bundle")
    assert check_export(run_dir / "bundle", tested, references=templates)["passed"]


def test_tiling_is_refused_where_whole_images_are_needed(tiles, tmp_path):
    config = load_config(
        None, [f"data.root={tiles}", "data.resize=tile", f"out_dir={tmp_path}", "name=c"]
    )
    with pytest.raises(ValueError, match="segment task"):
        get_task("classify")(config, tmp_path, False)
