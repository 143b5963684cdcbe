"""The anomaly task on tiny synthetic magnetic-tile-style data, and its building blocks."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from defectkit.config import ConfigError, load_config
from defectkit.data.samples import DatasetError
from defectkit.data.synthetic import make_mask_set
from defectkit.models.anomaly import create_method, list_methods
from defectkit.models.anomaly.patchcore import greedy_coreset, nearest_distance
from defectkit.tasks import get_task
from tests.parity import assert_same_anomaly_call


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
    assert torch.allclose(nearest_distance(queries, bank, chunk=64), expected, rtol=1e-5, atol=1e-6)


def test_the_autoencoder_reconstructs_each_patch_from_its_rings_never_from_itself():
    """A patch's reconstruction depends on the patches 2 x RING and 4 x RING away and on no
    patch nearer (itself included); its targets are the stages averaged over 3 x 3 patches;
    a saved state of an earlier form (no context_ring) does not load into it silently."""
    from defectkit.models.anomaly.autoencoder import RING
    from defectkit.tasks.anomaly.deploy import load_fitted_state

    model = create_method("autoencoder", layers=(2, 3), pretrained=False).eval()
    images = torch.randn(2, 3, 192, 192)  # a 24 x 24 patch grid
    stages = model.features.intermediates(images)
    context, targets = model._context_and_targets(images)
    assert torch.allclose(targets, model.standardise(model.features.combine(stages, 3)))
    assert torch.allclose(context, model.standardise_context(model.features.combine(stages, 1)))
    with torch.no_grad():
        before = model.reconstruct(context)
        centre = context.shape[-1] // 2
        for offset, seen in [(0, False), (RING - 1, False), (2 * RING, True), (4 * RING, True)]:
            changed = context.clone()
            changed[:, :, centre, centre + offset] += 10.0
            moved = (model.reconstruct(changed) - before)[:, :, centre, centre].abs().max()
            assert (moved > 1e-3) == seen, (offset, float(moved))
    state = {k: v for k, v in model.state_dict().items() if k != "context_ring"}
    fresh = create_method("autoencoder", layers=(2, 3), pretrained=False)
    with pytest.raises(RuntimeError, match="context_ring"):
        load_fitted_state(fresh, state)


def test_the_autoencoder_loss_averages_the_hardest_patches_only():
    """hard_fraction=1 is the plain mean squared error; a fraction keeps that share of the
    batch's patches, those with the largest errors; a fraction outside (0, 1] is refused."""
    from torch.nn import functional as F

    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    model = create_method("autoencoder", layers=(2, 3), pretrained=False, hard_fraction=1.0)
    model.eval()  # batch statistics frozen: every loss below sees the same targets
    context, targets = model._context_and_targets(images)
    reconstruction = model.reconstruct(context)
    assert torch.allclose(model.loss(images), F.mse_loss(reconstruction, targets), rtol=1e-5)
    errors = (reconstruction - targets).pow(2).mean(1).flatten().sort(descending=True).values
    model.hard_fraction = 0.25
    expected = errors[: round(0.25 * len(errors))].mean()
    assert torch.allclose(model.loss(images), expected, rtol=1e-5)
    assert model.loss(images) > errors.mean() * 1.05  # the hard ones are above the mean
    with pytest.raises(ValueError, match="hard_fraction=0"):
        create_method("autoencoder", pretrained=False, hard_fraction=0.0)


def test_registry_lists_patchcore_and_refuses_unknown():
    assert {"patchcore", "padim", "autoencoder", "patchcore_padim"} <= set(list_methods())
    with pytest.raises(ValueError, match="unknown anomaly method 'magic'"):
        create_method("magic")


@pytest.fixture(scope="module", params=["patchcore", "padim", "autoencoder", "patchcore_padim"])
def anomaly_run(request, tiles, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = load_config(
        "mt_anomaly",
        [
            f"data.root={tiles}",
            "data.image_size=64",
            f"out_dir={out}",
            "name=a",
            "anomaly.good_label=Ok",
            "anomaly.blur_sigma=1",
            f"anomaly.method={request.param}",
            "anomaly.epochs=10",
        ],
    )
    run_dir = out / "a"
    run_dir.mkdir()
    return run_dir, get_task("anomaly")(config, run_dir, False)


def test_anomaly_run_separates_synthetic_defects(anomaly_run):
    run_dir, result = anomaly_run
    assert result["test_images"] == 4 + 32  # 20% of 16 good images, every defect image
    assert result["calibration_images"] == 1
    # every method on pretrained features, from 11 images, the autoencoder included (it
    # inpaints them: image AUROC 1.0, pixel 0.96, AUPRO 0.85 here with two seeds)
    assert result["image_auroc"] >= 0.9
    assert result["pixel_auroc"] >= 0.8 and result["aupro"] >= 0.5
    # each defect class's pixels against the defect-free images', the good class none
    per_class = result["per_class"]
    assert {c for c, v in per_class.items() if "pixel_auroc" in v} == set(per_class) - {"Ok"}
    assert all(v["pixel_auroc"] >= 0.7 for v in per_class.values() if "pixel_auroc" in v)
    # and inside each class's own images: the map finds the defect in its image
    assert all(v["pixel_auroc_within"] >= 0.7 for v in per_class.values() if "pixel_auroc" in v)
    assert all(
        v["image_pixel_auroc_median"] >= 0.7 and 0 <= v["images_map_inverted"] <= v["images"]
        for v in per_class.values()
        if "pixel_auroc" in v
    )
    # and the pooled number without each class's images, which says who holds it down
    assert all(
        0.7 <= v["pixel_auroc_without"] <= 1 for v in per_class.values() if "pixel_auroc" in v
    )
    assert result["image_auroc"] <= 1.0 and np.isfinite(result["threshold"])
    assert result["aupro"] <= 1.0
    assert result["model_mb"] > 0
    for name in (
        "metrics.json",
        "report.html",
        "bundle/bundle.json",
        "bundle/model.safetensors",
        "plots/heat_caught.png",
        "plots/score_histogram.png",
    ):
        assert (run_dir / name).is_file(), name


@pytest.mark.numerics
@pytest.mark.parametrize("anomaly_run", ["autoencoder"], indirect=True)
def test_the_trained_autoencoder_exports_to_onnx_with_the_same_decisions(
    anomaly_run, tiles, tmp_path
):
    """The ring convolutions (masked weights) export like any convolution: the ONNX graph
    scores the images as PyTorch does (the parity check) and decides the same."""
    import shutil

    from defectkit.runtime.export import check_export, export_onnx

    run_dir, result = anomaly_run
    assert result["method"] == "autoencoder"
    bundle = tmp_path / "bundle"
    shutil.copytree(run_dir / "bundle", bundle)
    export_onnx(bundle)
    images = sorted(tiles.glob("MT_*/Imgs/*.jpg"))[::4]
    check = check_export(bundle, images)
    assert check["passed"], check
    assert check["images"] == len(images) and check["decisions_disagree"] == []


@pytest.mark.parametrize("anomaly_run", ["autoencoder"], indirect=True)
def test_an_autoencoder_bundle_of_an_earlier_form_is_refused_naming_the_fix(anomaly_run, tmp_path):
    """A bundle whose state lacks the ring network (written by the 1 x 1 form) is refused
    at load with a BundleError that says to retrain, not a bare state-dict error."""
    import shutil

    from safetensors.torch import load_file, save_file

    from defectkit.bundle import BundleError
    from defectkit.runs import sha256_of
    from defectkit.runtime.inspector import Inspector

    run_dir, _ = anomaly_run
    bundle = tmp_path / "bundle"
    shutil.copytree(run_dir / "bundle", bundle)
    weights = bundle / "model.safetensors"
    state = {k: v for k, v in load_file(str(weights)).items() if k != "context_ring"}
    save_file(state, str(weights))
    meta = json.loads((bundle / "bundle.json").read_text())  # an intact old bundle: its
    meta["weights_sha256"] = sha256_of(weights)  # checksum matches its weights
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"autoencoder state does not fit .* of .* retrain"):
        Inspector(bundle)


def test_anomaly_needs_a_good_class(tmp_path):
    root = make_mask_set(tmp_path / "t", per_class=2, size=32)
    config = load_config(
        "mt_anomaly", [f"data.root={root}", f"out_dir={tmp_path}", "anomaly.good_label=Free"]
    )
    with pytest.raises(ConfigError, match=r"good_label='Free' is not a class .* \['Ok', "):
        get_task("anomaly")(config, Path(tmp_path), False)


def test_anomaly_refuses_a_hard_fraction_outside_zero_to_one(tmp_path):
    root = make_mask_set(tmp_path / "t", per_class=2, size=32)
    config = load_config(
        "mt_anomaly",
        [
            f"data.root={root}",
            f"out_dir={tmp_path}",
            "anomaly.method=autoencoder",
            "anomaly.hard_fraction=1.5",
        ],
    )
    with pytest.raises(ConfigError, match=r"anomaly.hard_fraction=1.5 is outside \(0, 1\]"):
        get_task("anomaly")(config, Path(tmp_path), False)
    assert not (tmp_path / "bundle").exists()  # refused before any work


@pytest.mark.numerics
def test_bundle_reproduces_the_run_scores_and_decisions(anomaly_run):
    import csv

    from defectkit.runtime.inspector import Inspector

    run_dir, result = anomaly_run
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))[:8]
    inspector = Inspector(run_dir)
    predictions = list(inspector.predict([row["image"] for row in rows]))
    for row, prediction in zip(rows, predictions, strict=True):
        raw = prediction.scores["anomaly_score"]
        # the run's predictions.csv is the bundle's call, in the columns of `defectkit predict`
        assert_same_anomaly_call(prediction, row, result["threshold"])
        # reported normalised: 0.5 is the calibrated threshold
        assert prediction.threshold == 0.5
        assert (prediction.ng_score >= 0.5) == (raw >= result["threshold"])
        assert prediction.heat_map.shape == (64, 64)
        assert 0.0 <= prediction.heat_map.min() <= prediction.heat_map.max() <= 1.0
        if prediction.ok:
            assert prediction.regions == []
        else:  # the map's peak is the image score, so an NG image has a region
            assert prediction.regions and prediction.regions[0].peak >= 0.5


def test_predict_writes_heat_map_overlays(anomaly_run, tiles, tmp_path):
    from defectkit.cli import main

    run_dir, _ = anomaly_run
    images = sorted(tiles.glob("MT_Spot/Imgs/*.jpg"))[:3]
    assert (
        main(
            [
                "predict",
                str(run_dir),
                *map(str, images),
                "--out",
                str(tmp_path / "p.jsonl"),
                "--overlays",
                str(tmp_path / "overlays"),
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 3
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 3


def test_mvtec_layout_runs_end_to_end_with_its_own_split(tmp_path):
    """A tiny MVTec-AD-style category: train/good, test/{good,spot}, ground_truth/spot."""
    from PIL import Image

    from defectkit.data.synthetic import draw_defect, surface

    rng = np.random.default_rng(0)
    root = tmp_path / "bottle"
    for folder, count, kind in (
        ("train/good", 12, "ok"),
        ("test/good", 4, "ok"),
        ("test/spot", 4, "spot"),
    ):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            image = surface(rng, 64)
            mask = draw_defect(image, kind, rng)
            Image.fromarray(image.astype(np.uint8)).save(root / folder / f"{i:03d}.png")
            if kind != "ok":
                (root / "ground_truth" / "spot").mkdir(parents=True, exist_ok=True)
                Image.fromarray((mask * 255).astype(np.uint8)).save(
                    root / "ground_truth" / "spot" / f"{i:03d}_mask.png"
                )
    config = load_config(
        "mt_anomaly",
        [
            f"data.root={root}",
            "data.format=auto",
            "data.image_size=64",
            f"out_dir={tmp_path}",
            "anomaly.good_label=",
            "split.val_fraction=0.2",
            "anomaly.blur_sigma=1",
        ],
    )
    result = get_task("anomaly")(config, tmp_path, False)
    assert result["good_label"] == "good"
    assert result["test_images"] == 8 and result["calibration_images"] == 2
    assert result["image_auroc"] >= 0.9 and result["pixel_auroc"] >= 0.8


def test_content_box_and_resize_pad_keep_the_aspect_ratio():
    from defectkit.data.transforms import ResizePad, content_box

    assert content_box(100, 50, 64, "pad") == (0, 16, 64, 32)
    assert content_box(100, 50, 64, "squash") == (0, 0, 64, 64)
    image = torch.zeros(3, 100, 50, dtype=torch.uint8)
    image[:, :, -1] = 200  # the right edge column is replicated into the padding
    out = ResizePad(64, __import__("torchvision").transforms.InterpolationMode.BILINEAR)(image)
    assert out.shape == (3, 64, 64) and out.dtype == torch.uint8
    assert out[0, 10, 60] == out[0, 10, 47] and out[0, 10, 5] == 0


@pytest.mark.numerics
def test_pad_mode_maps_are_cropped_to_each_image(tiles, tmp_path):
    """Tiles cut to 64 x 40: the run and the Inspector score the image's own content and
    return maps at its own size."""
    import csv
    import shutil

    from PIL import Image

    from defectkit.runtime.inspector import Inspector

    root = tmp_path / "narrow"
    shutil.copytree(tiles, root)
    for path in root.rglob("*.*"):
        with Image.open(path) as image:
            cut = image.crop((0, 0, 40, 64))
        cut.save(path)
    config = load_config(
        "mt_anomaly",
        [
            f"data.root={root}",
            "data.image_size=64",
            f"out_dir={tmp_path}",
            "name=p",
            "anomaly.good_label=Ok",
            "anomaly.blur_sigma=1",
        ],
    )
    assert config.data.resize == "pad"
    run_dir = tmp_path / "p"
    run_dir.mkdir()
    result = get_task("anomaly")(config, run_dir, False)
    assert result["image_auroc"] >= 0.8
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))[::6]
    predictions = list(Inspector(run_dir).predict([row["image"] for row in rows]))
    for row, prediction in zip(rows, predictions, strict=True):
        assert_same_anomaly_call(prediction, row, result["threshold"])
        assert prediction.heat_map.shape == (64, 40)


def test_defects_among_the_training_images_are_flagged(tiles, tmp_path, caplog):
    """Spot images slipped into the defect-free folder: PatchCore scores its training images
    leave-one-out (the coreset would otherwise keep the defects' patches) and names them."""
    import json
    import shutil

    root = tmp_path / "dirty"
    shutil.copytree(tiles, root)
    for i, image in enumerate(sorted((root / "MT_Spot" / "Imgs").glob("*.jpg"))[:3]):
        shutil.copy(image, root / "MT_Ok" / "Imgs" / f"slipped{i}.jpg")
        shutil.copy(image.with_suffix(".png"), root / "MT_Ok" / "Imgs" / f"slipped{i}.png")
    config = load_config(
        "mt_anomaly",
        [
            f"data.root={root}",
            "data.image_size=64",
            f"out_dir={tmp_path}",
            "name=d",
            "anomaly.good_label=Ok",
            "anomaly.method=patchcore",
            "anomaly.blur_sigma=1",
            "split.val_fraction=0.2",
        ],
    )
    run_dir = tmp_path / "d"
    run_dir.mkdir()
    with caplog.at_level("WARNING"):
        result = get_task("anomaly")(config, run_dir, False)
    check = result["training_check"]
    fit = json.loads((run_dir / "split.json").read_text())["train"]  # the fitted images
    slipped = {Path(p).name for p in fit if "slipped" in p}
    flagged = {Path(item["image"]).name for item in check["images"]}
    assert check["leave_one_out"] and check["checked"] == len(fit)
    # a few slipped-in defects are caught (many alike would vouch for each other)
    assert slipped and flagged & slipped
    assert "training folder may hold defects" in caplog.text


def test_a_single_good_image_is_refused_with_the_fix(tmp_path):
    root = make_mask_set(tmp_path / "one", per_class=1, size=32)
    config = load_config(
        "mt_anomaly", [f"data.root={root}", f"out_dir={tmp_path}", "anomaly.good_label=Ok"]
    )
    with pytest.raises(DatasetError, match="tens of good images"):
        get_task("anomaly")(config, tmp_path, False)


def test_images_of_other_sizes_and_channel_counts_are_inspected(anomaly_bundle, tiles, tmp_path):
    from PIL import Image

    from defectkit.runtime.inspector import Inspector

    source = Image.open(sorted(tiles.glob("MT_Spot/Imgs/*.jpg"))[0])
    rgba = source.convert("RGBA").resize((70, 50))
    rgba.save(tmp_path / "rgba.png")
    wide = np.asarray(source.convert("L").resize((90, 40)), dtype=np.uint16) * 256
    Image.fromarray(wide).save(tmp_path / "sixteen.png")
    predictions = list(
        Inspector(anomaly_bundle).predict([tmp_path / "rgba.png", tmp_path / "sixteen.png"])
    )
    assert [p.heat_map.shape for p in predictions] == [(50, 70), (40, 90)]
    assert all(np.isfinite(p.ng_score) for p in predictions)


def test_eval_command_scores_an_anomaly_bundle(anomaly_bundle, tiles, tmp_path, capsys):
    import json

    from defectkit.cli import main

    assert (
        main(["eval", str(anomaly_bundle), "--data", str(tiles), "--out", str(tmp_path / "e.json")])
        == 0
    )
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["images"] == 48 and result["image_auroc"] >= 0.9
    assert result["pixel_auroc"] >= 0.8
    assert "image AUROC" in capsys.readouterr().out
