"""The `defectkit` command as a user runs it."""

import csv
import json
import shutil

import pytest

from defectkit.cli import main


def test_data_inspect_reports_broken_files_and_duplicates(synthetic_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    (data / "spot" / "broken_1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    shutil.copy(data / "ok" / "ok_0.png", data / "ok" / "ok_copy.png")
    code = main(["data", "inspect", str(data), "--out", str(tmp_path / "inspect")])
    out = capsys.readouterr().out
    assert code == 1  # broken files make the command fail, so scripts notice
    assert "broken_1.png" in out and "unreadable files: 1" in out
    summary = json.loads((tmp_path / "inspect" / "summary.json").read_text())
    assert summary["classes"] == {"ok": 17, "scratch": 16, "spot": 17}
    assert len(summary["exact_duplicates"]) == 1
    assert (tmp_path / "inspect" / "samples.png").stat().st_size > 1000


def test_train_predict_eval_through_the_command(synthetic_root, tmp_path, capsys):
    code = main(
        [
            "train",
            "--set",
            f"data.root={synthetic_root}",
            "--set",
            "data.image_size=64",
            "--set",
            f"out_dir={tmp_path}",
            "--set",
            "name=cli",
            "--set",
            "train.epochs=1",
            "--set",
            "train.batch_size=8",
        ]
    )
    assert code == 0
    assert "test accuracy" in capsys.readouterr().out
    bad = tmp_path / "bad.jpg"
    bad.write_text("no image")
    out = tmp_path / "pred.csv"
    assert (
        main(
            [
                "predict",
                str(tmp_path / "cli"),
                str(synthetic_root / "spot"),
                str(bad),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 17 and {"label", "ok", "score_spot", "error"} <= set(rows[0])
    assert [r["image"] for r in rows if r["error"]] == [str(bad)]  # the bad file has its row
    assert "skipped" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                str(tmp_path / "cli" / "bundle"),
                "--data",
                str(synthetic_root),
                "--out",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "eval.json").read_text())["confusion_matrix"]


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "--set", "train.epochz=1"]) == 2
    assert "unknown key(s) train.epochz" in capsys.readouterr().err
    assert (
        main(["train", "--set", f"data.root={tmp_path / 'none'}", "--set", f"out_dir={tmp_path}"])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "x.png"]) == 2
    assert "bundle.json is missing" in capsys.readouterr().err


def test_resume_needs_a_run_folder(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_synthetic_demo_needs_no_data(tmp_path, capsys):
    assert (
        main(
            [
                "demo",
                "--synthetic",
                "--out",
                str(tmp_path),
                "--set",
                "train.epochs=1",
                "--set",
                "name=demo",
            ]
        )
        == 0
    )
    assert "test accuracy" in capsys.readouterr().out
    assert (tmp_path / "demo" / "report.html").is_file()
    assert (tmp_path / "synthetic-data" / "scratch").is_dir()


def _all_parsers(parser):
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_argument_has_help_and_shows_its_default():
    import argparse

    from defectkit.cli import build_parser

    parsers = list(_all_parsers(build_parser()))
    assert len(parsers) >= 14
    for parser in parsers:
        assert parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter, parser.prog
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, f"{parser.prog} {action.dest} has no help"
    text = " ".join(next(p for p in parsers if p.prog.endswith("predict")).format_help().split())
    assert "(default: 16)" in text and "(default: predictions.csv)" in text


def test_recipes_and_config_show_explain_themselves(capsys):
    import dataclasses

    from defectkit.config import RECIPES_DIR, RunConfig

    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for path in RECIPES_DIR.glob("*.yaml"):
        line = next(line for line in lines if line.startswith(path.stem + " "))
        assert len(line.split(None, 1)[1]) > 20  # a real description
    assert main(["config", "show", "mt_anomaly", "--set", "anomaly.blur_sigma=2"]) == 0
    shown = capsys.readouterr().out
    for section in dataclasses.fields(RunConfig):
        value = getattr(RunConfig(), section.name)
        if dataclasses.is_dataclass(value):
            for key in dataclasses.fields(value):
                assert f"\n  {key.name}: " in shown, f"{section.name}.{key.name}"
    assert "  blur_sigma: 2.0  # Gaussian smoothing of the map" in shown
    assert "  on_bad_image: 'error'  # every image, mask and reference" in shown


def test_data_inspect_writes_under_runs_by_default(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "inspect", str(synthetic_root)]) == 0
    out = tmp_path / "runs" / f"data-inspect-{synthetic_root.name}"
    assert (out / "summary.json").is_file() and (out / "samples.png").is_file()
    assert not (tmp_path / "summary.json").exists()


def test_data_inspect_groups_look_alike_images(synthetic_root, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from defectkit.data.synthetic import draw_defect, surface

    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    pixels = surface(np.random.default_rng(5), 256)  # a photo-sized part: 256 px
    draw_defect(pixels, "spot", np.random.default_rng(5))
    original = Image.fromarray(pixels.astype(np.uint8))
    original.save(data / "spot" / "spot_2.png")
    darker = np.asarray(original, dtype=np.float32) * 0.7  # the same part, another exposure
    Image.fromarray(darker.astype(np.uint8)).save(data / "spot" / "spot_2_dark.png")
    original.resize((230, 230)).save(data / "spot" / "spot_2_small.jpg", quality=75)  # a copy
    assert main(["data", "inspect", str(data), "--out", str(tmp_path / "i")]) == 0
    summary = json.loads((tmp_path / "i" / "summary.json").read_text())
    names = [sorted(p.rsplit("/", 1)[1] for p in group) for group in summary["look_alike_groups"]]
    assert names == [["spot_2.png", "spot_2_dark.png", "spot_2_small.jpg"]]  # nothing else
    out = capsys.readouterr().out
    assert "correlating above 0.99): 1 group(s) holding 3 images" in out
    assert "the largest: 3 images (spot_2.png ~ spot_2_dark.png ~ spot_2_small.jpg)" in out


def test_backbones_says_where_each_file_is_or_goes(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    lite0 = next(line for line in out.splitlines() if line.startswith("tf_efficientnet_lite0"))
    assert "found" in lite0 and "sha256 checked" in lite0
    resnet = next(line for line in out.splitlines() if line.startswith("resnet18 "))
    assert "put resnet18-f37072fd.pth" in resnet or "found" in resnet


def test_a_run_name_clash_says_how_to_choose_another(synthetic_root, tmp_path, capsys):
    args = ["train", "--set", f"data.root={synthetic_root}", "--set", f"out_dir={tmp_path}"]
    args += ["--set", "name=twice", "--set", "data.image_size=32", "--set", "train.epochs=1"]
    assert main(args) == 0
    assert main(args) == 2
    assert "--set name=..." in capsys.readouterr().err


def test_the_task_choices_are_the_registered_tasks(monkeypatch):
    """`train --task` offers what the registry holds (a task registered from outside the
    package included), not a list written in the CLI."""
    from defectkit import tasks
    from defectkit.cli import build_parser

    monkeypatch.setitem(tasks._TASKS, "brightness", tasks.get_task("classify"))
    parser = build_parser()
    assert parser.parse_args(["train", "--task", "brightness", "--data", "x"]).task == "brightness"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--task", "nope", "--data", "x"])
