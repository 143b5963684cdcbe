"""The `defectkit` command as a user runs it."""

import csv
import json
import shutil

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
