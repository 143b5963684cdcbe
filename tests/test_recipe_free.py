"""A new dataset without a recipe: settings drawn from the data, every setting checked
against the data before any work, a dry run that trains nothing."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.cli import main
from defectkit.data.formats import read_dataset
from defectkit.data.synthetic import make_box_set, make_classify_set, make_mask_set
from defectkit.tasks.defaults import draw_defaults


def _long_set(root: Path, per_class: int = 12) -> Path:
    """Class folders of 160 x 64 images (2.5:1), like commutator or strip photos."""
    rng = np.random.default_rng(0)
    for kind in ("good", "dent"):
        folder = root / kind
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.normal(110, 10, (64, 160))
            if kind == "dent":
                pixels[20:40, 60:90] -= 60
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def _train(tmp_path, *extra: str) -> int:
    return main(["train", *extra, "--set", f"out_dir={tmp_path / 'runs'}", "--set", "name=run"])


def test_long_images_keep_their_aspect_and_small_classes_take_the_fewshot_path(tmp_path):
    dataset = read_dataset(_long_set(tmp_path / "long"))
    values, notes = draw_defaults("classify", dataset, "cpu")
    assert values["data"]["resize"] == "pad"  # 2.5:1 is never squashed
    assert values["data"]["image_size"] == 64  # the short side, above the 64 px floor
    assert values["eval"]["positive"] == "dent"  # beside the defect-free "good"
    assert values["train"]["strategy"] == "fewshot"  # 12 images per class
    assert values["train"]["epochs"] == 30  # of the head alone, not the image budget
    assert any("aspect ratio 2.50:1" in n for n in notes)
    anomaly, _ = draw_defaults("anomaly", dataset, "cpu")
    assert anomaly["anomaly"]["good_label"] == "good"


def test_large_images_are_tiled_and_epochs_follow_the_dataset_size(tmp_path):
    boxes = read_dataset(make_box_set(tmp_path / "boxes", count=8, size=1400))
    values, _ = draw_defaults("detect", boxes, "cpu")
    assert (values["data"]["resize"], values["data"]["image_size"]) == ("tile", 512)
    small = read_dataset(make_classify_set(tmp_path / "small", per_class=30, size=64))
    big_values, _ = draw_defaults("classify", small, "cuda")
    cpu_values, _ = draw_defaults("classify", small, "cpu")
    # 90 images: 8000 image passes would be 124 epochs: bounded by the device's budget
    assert (cpu_values["train"]["epochs"], big_values["train"]["epochs"]) == (12, 30)


def test_dry_run_prints_the_checked_settings_and_trains_nothing(tmp_path, capsys):
    data = _long_set(tmp_path / "long")
    assert _train(tmp_path, "--task", "classify", "--data", str(data), "--dry-run") == 0
    out = capsys.readouterr().out
    assert "class_folders layout, 24 images" in out and "good 12" in out
    assert "data.resize=pad" in out and "resize: pad" in out
    assert "dry run: nothing trained" in out
    assert not (tmp_path / "runs").exists()


def test_each_task_trains_from_task_and_data_alone(tmp_path, synthetic_root, tiles):
    """No recipe: classify, anomaly and segment runs from --task and --data (one epoch where
    a network trains, to keep the test short), each ending with its metrics."""
    boxes = make_box_set(tmp_path / "boxes", count=24, size=96)
    for task, data in (
        ("classify", synthetic_root),
        ("anomaly", tiles),
        ("segment", tiles),
        ("detect", boxes),
    ):
        out = tmp_path / task
        code = main(
            [
                "train",
                *("--task", task, "--data", str(data)),
                *("--set", "train.epochs=1", "--set", f"out_dir={out}", "--set", "name=run"),
            ]
        )
        assert code == 0, task
        metrics = json.loads((out / "run" / "metrics.json").read_text())
        config = (out / "run" / "config.yaml").read_text()
        assert f"task: {task}" in config and "format: auto" not in config
        assert metrics, task
        if task == "anomaly":
            assert "good_label: Ok" in config and 0 <= metrics["image_auroc"] <= 1


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("eval.positive=ng", "eval.positive='ng' is not a class"),
        ("data.label_mode=binary", "data.label_mode='binary' means nothing"),
        ("split.stratify_by=type", "split.stratify_by names 'type'"),
        ("split.stratify_by=name_prefix", "too small to give a training image"),
        ("data.image_size=10000", "data.image_size=10000 is outside"),
    ],
)
def test_a_wrong_setting_fails_before_any_image_is_read(tmp_path, capsys, setting, message):
    data = make_classify_set(tmp_path / "data", per_class=8, size=32)
    for i, path in enumerate(sorted(data.rglob("*.png"))):  # names without a shared prefix
        path.rename(path.with_name(f"{i:03d}_{i}.png"))
    code = _train(tmp_path, "--task", "classify", "--data", str(data), "--set", setting)
    error = capsys.readouterr().err
    assert code == 2 and message in error, error
    assert "--set" in error or "drop the setting" in error  # the fix is named
    assert not (tmp_path / "runs" / "run").exists()  # no run folder, nothing trained


def test_every_problem_is_named_at_once_with_what_the_data_offers(tmp_path, capsys):
    data = make_classify_set(tmp_path / "data", per_class=8, size=32)
    for path in sorted((data / "spot").glob("*.png"))[2:]:
        path.unlink()  # a class of 2 images
    code = _train(
        tmp_path,
        "--config",
        "synthetic_classify",
        "--data",
        str(data),
        *("--set", "eval.positive=NG"),
    )
    error = capsys.readouterr().err
    assert code == 2
    assert "2 setting(s) do not fit the data" in error
    assert "['ok', 'scratch', 'spot']" in error  # what the data offers
    assert "class 'spot' has 2 image(s)" in error


@pytest.mark.parametrize("layout", ["class_folders", "image_mask"])
def test_an_empty_class_folder_is_named(tmp_path, capsys, layout):
    if layout == "class_folders":
        data = make_classify_set(tmp_path / "data", per_class=8, size=32)
        (data / "dent").mkdir()
    else:
        data = make_mask_set(tmp_path / "data", per_class=6, size=64)
        (data / "MT_Dent" / "Imgs").mkdir(parents=True)
    task = "classify" if layout == "class_folders" else "segment"
    assert _train(tmp_path, "--task", task, "--data", str(data), "--dry-run") == 2
    error = capsys.readouterr().err
    assert "Dent" in error.replace("dent", "Dent") and "no images" in error


def test_anomaly_without_a_named_good_class_says_how_to_name_it(tiles, tmp_path, capsys):
    data = tmp_path / "tiles"
    shutil.copytree(tiles, data)
    (data / "MT_Ok").rename(data / "MT_Clean")
    code = _train(tmp_path, "--task", "anomaly", "--data", str(data), "--dry-run")
    error = capsys.readouterr().err
    assert code == 2 and "no class of" in error and "'Clean'" in error
    assert "--set anomaly.good_label=CLASS" in error
    assert (
        _train(
            tmp_path,
            *("--task", "anomaly", "--data", str(data), "--dry-run"),
            *("--set", "anomaly.good_label=Clean"),
        )
        == 0
    )


def test_segment_input_sizes_the_encoder_cannot_take_are_refused(tiles, tmp_path, capsys):
    code = _train(
        tmp_path,
        *("--task", "segment", "--data", str(tiles), "--dry-run"),
        *("--set", "data.image_size=100", "--set", "segment.encoder_depth=5"),
    )
    error = capsys.readouterr().err
    assert code == 2 and "not a multiple of 32" in error and "data.image_size=96" in error


def test_recipes_no_longer_carry_values_of_their_own_dataset(tmp_path, capsys):
    """The NEU recipe on a class-folder set (not its name-prefix layout): it runs (dry)."""
    data = make_mask_set(tmp_path / "tiles", per_class=6, size=64)
    assert _train(tmp_path, "--config", "mt_anomaly", "--data", str(data), "--dry-run") == 0
    assert "good_label: Ok" in capsys.readouterr().out
    other = make_classify_set(tmp_path / "folders", per_class=6, size=32)
    assert _train(tmp_path, "--config", "neu_classify", "--data", str(other), "--dry-run") == 0
    assert "format: class_folders" in capsys.readouterr().out
