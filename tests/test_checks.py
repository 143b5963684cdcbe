"""Bad input is found before any work is spent: every image, mask and reference decoded
once (all bad files named in one message, or left out and listed), label files checked line
by line, decompression bombs refused everywhere an image is opened."""

import csv
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import defectkit
from defectkit.cli import main
from defectkit.data import checks
from defectkit.data.checks import check_dataset
from defectkit.data.formats import read_dataset
from defectkit.data.samples import DatasetError
from defectkit.data.synthetic import make_mask_set
from defectkit.tasks.classify import pipeline as classify


def bomb(path: Path, side: int = 20000) -> Path:
    """A small PNG whose header claims side x side pixels (as a decompression bomb does)."""
    buffer = path.with_suffix(".tmp.png")
    Image.new("L", (8, 8)).save(buffer)
    data = bytearray(buffer.read_bytes())
    buffer.unlink()
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", side, side)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def broken_copy(synthetic_root: Path, folder: Path) -> dict[str, Path]:
    """The synthetic class folders with a truncated PNG, a text file named .png and a bomb."""
    shutil.copytree(synthetic_root, folder)
    good = (folder / "ok" / "ok_0.png").read_bytes()
    bad = {
        "truncated": folder / "scratch" / "scratch_truncated.png",
        "text": folder / "spot" / "spot_note.png",
        "bomb": bomb(folder / "ok" / "ok_bomb.png"),
    }
    bad["truncated"].write_bytes(good[: len(good) // 2])
    bad["text"].write_text("not an image")
    return bad


def _overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"data.root={root}",
        "data.image_size=64",
        "train.epochs=1",
        "train.batch_size=8",
        f"out_dir={out}",
        "name=run",
        *extra,
    ]


def test_every_bad_file_is_named_before_training(synthetic_root, tmp_path, monkeypatch):
    bad = broken_copy(synthetic_root, tmp_path / "data")

    def no_training(*args, **kwargs):
        raise AssertionError("training started despite bad images")

    monkeypatch.setattr(classify, "train_one_epoch", no_training)
    with pytest.raises(DatasetError) as caught:
        defectkit.train(None, _overrides(tmp_path / "data", tmp_path / "runs"))
    message = str(caught.value)
    assert "3 of 51 samples" in message
    for path in bad.values():
        assert str(path) in message
    assert "its header declares 400 Mpx, over the limit of 40 Mpx" in message
    assert "data.on_bad_image=skip" in message
    assert not (tmp_path / "runs" / "run").exists()  # no half-made run folder


def test_skip_mode_leaves_bad_files_out_and_lists_them(synthetic_root, tmp_path):
    bad = broken_copy(synthetic_root, tmp_path / "data")
    run_dir, _ = defectkit.train(
        None, _overrides(tmp_path / "data", tmp_path / "runs", "data.on_bad_image=skip")
    )
    left_out = json.loads((run_dir / "left_out.json").read_text())
    assert sorted(entry["file"] for entry in left_out) == sorted(map(str, bad.values()))
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["left_out"]) == 3
    used = split["train"] + split["val"] + split["test"]
    assert len(used) == 48 and not any("bomb" in p or "note" in p for p in used)
    report = (run_dir / "report.html").read_text()
    assert "Left out: 3 sample(s)" in report and "ok_bomb.png" in report


def test_a_second_check_is_served_from_the_cache(synthetic_root, tmp_path, monkeypatch):
    shutil.copytree(synthetic_root, tmp_path / "data")
    dataset = read_dataset(tmp_path / "data")
    calls = []
    original = checks.check_file
    monkeypatch.setattr(checks, "check_file", lambda *a: calls.append(a) or original(*a))
    check_dataset(dataset)
    assert len(calls) == 48
    check_dataset(dataset)
    assert len(calls) == 48  # nothing decoded again
    (tmp_path / "data" / "ok" / "ok_0.png").write_bytes(b"changed")  # size and mtime change
    with pytest.raises(DatasetError, match="ok_0.png"):
        check_dataset(dataset)
    assert len(calls) == 49


def test_a_mask_of_another_size_is_named(tmp_path):
    root = make_mask_set(tmp_path / "tiles", per_class=2, size=32)
    mask = next(root.rglob("scratch0.png"))
    Image.new("L", (16, 16)).save(mask)
    with pytest.raises(DatasetError, match=r"scratch0.png: the mask is 16x16 pixels"):
        check_dataset(read_dataset(root))


def test_bomb_is_reported_by_inspect_predict_and_eval(
    synthetic_root, classify_bundle, tmp_path, capsys
):
    folder = tmp_path / "data"
    shutil.copytree(synthetic_root, folder)
    bomb(folder / "ok" / "ok_bomb.png")
    assert main(["data", "inspect", str(folder), "--out", str(tmp_path / "inspect")]) == 1
    assert "ok_bomb.png: its header declares 400 Mpx" in capsys.readouterr().out
    # predict: every good image predicted, the bomb a row with its error, exit code 0
    out = tmp_path / "p.csv"
    assert main(["predict", str(classify_bundle), str(folder / "ok"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 17
    errors = [r for r in rows if r["error"]]
    assert len(errors) == 1 and errors[0]["image"].endswith("ok_bomb.png")
    assert "decompression bomb" in errors[0]["error"]
    assert all(r["label"] for r in rows if not r["error"])
    # eval: refused naming the file, or scored without it in skip mode
    with pytest.raises(DatasetError, match="ok_bomb.png"):
        defectkit.evaluate(classify_bundle, folder)
    result = defectkit.evaluate(classify_bundle, folder, on_bad_image="skip")
    assert result["images"] == 48 and result["left_out"][0]["file"].endswith("ok_bomb.png")
    # compare: refused before either model scores an image, or compared without it
    out = tmp_path / "compare"
    compare = ["compare", str(classify_bundle), str(classify_bundle), "--data", str(folder)]
    capsys.readouterr()
    assert main([*compare, "--out", str(out)]) == 2
    assert "ok_bomb.png" in capsys.readouterr().err and not out.exists()
    assert main([*compare, "--out", str(out), "--on-bad-image", "skip"]) == 0
    compared = json.loads((out / "compare.json").read_text())
    assert compared["images"] == 48 and compared["left_out"][0]["file"].endswith("ok_bomb.png")
    assert "left out" in capsys.readouterr().err
    assert "ok_bomb.png" in (out / "report.html").read_text()


def test_predict_on_only_bad_files_still_writes_its_output(classify_bundle, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    bomb(folder / "a.png")
    (folder / "b.png").write_text("text")
    out = tmp_path / "p.csv"
    assert main(["predict", str(classify_bundle), str(folder), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["image"]).name for r in rows] == ["a.png", "b.png"]
    assert all(r["error"] for r in rows)


def _image(path: Path, size=(100, 50)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], 90, np.uint8)).save(path)
    return path


def test_bad_yolo_lines_are_all_named_with_file_and_line(tmp_path):
    for name in ("a", "b", "c"):
        _image(tmp_path / "images" / f"{name}.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "classes.txt").write_text("crack\nspot\n")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n")
    (tmp_path / "labels" / "b.txt").write_text("1 0.1 0.1 0.9 0.9 0.5\n")  # polygon, 2 points
    (tmp_path / "labels" / "c.txt").write_text("1 0.5 0.5 0 0.3\n")  # zero width
    with pytest.raises(DatasetError) as caught:
        read_dataset(tmp_path)
    message = str(caught.value)
    assert "3 problem(s)" in message
    assert f"{tmp_path / 'labels' / 'a.txt'}:2: class id 7 is outside the 2 names" in message
    assert f"{tmp_path / 'labels' / 'b.txt'}:1:" in message and "at least 3 points" in message
    assert f"{tmp_path / 'labels' / 'c.txt'}:1:" in message and "zero area" in message


def test_bad_voc_boxes_are_named(tmp_path):
    _image(tmp_path / "JPEGImages" / "a.jpg", (200, 100))
    (tmp_path / "Annotations").mkdir()

    def box(x1, y1, x2, y2):
        return (
            f"<object><name>crack</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )

    (tmp_path / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>200</width><height>100</height>"
        f"</size>{box(10, 10, 50, 40)}{box(30, 30, 30, 60)}{box(150, 20, 260, 80)}</annotation>"
    )
    with pytest.raises(DatasetError) as caught:
        read_dataset(tmp_path)
    message = str(caught.value)
    assert "2 problem(s)" in message
    assert "a.xml: object 2 (crack): box (30, 30, 30, 60) has zero area" in message
    assert "object 3 (crack): box (150, 20, 260, 80) lies outside the 200x100 image" in message
