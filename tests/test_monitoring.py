"""On the line over time: operator feedback and its store, shadow mode, /metrics, drift."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectkit.runtime.feedback import FeedbackStore, export_dataset, summarise
from defectkit.runtime.monitor import DriftMonitor, build_baseline, psi
from defectkit.serve import create_app


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def client(classify_bundle, tmp_path):
    from fastapi.testclient import TestClient

    app = create_app(classify_bundle, workers=1, feedback=tmp_path / "store")
    return TestClient(app), tmp_path / "store"


def _inspect(client, paths):
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    response = client.post("/inspect", files=files)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_feedback_round_trip_stores_the_image_the_call_and_the_answer(client, synthetic_root):
    client, store_dir = client
    path = sorted(synthetic_root.glob("spot/*.png"))[0]
    (result,) = _inspect(client, [path])
    other = next(c for c in ("ok", "scratch", "spot") if c != result["label"])
    answer = client.post("/feedback", json={"id": result["id"], "label": other, "operator": "A"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["overturned"] is True
    same = client.post("/feedback", json={"id": result["id"], "label": result["label"]})
    assert same.json()["overturned"] is False
    (first, second) = FeedbackStore(store_dir).records("feedback")
    assert first["image"] == path.name and first["operator"] == "A"
    assert first["model_label"] == result["label"] and first["answer"]["label"] == other
    assert first["output"]["scores"] == pytest.approx(result["scores"], rel=1e-6)
    stored = (store_dir / first["image_file"]).read_bytes()
    assert stored == path.read_bytes()  # the very bytes sent, stored once for both answers
    assert first["image_file"] == second["image_file"]
    assert first["image_sha256"] == hashlib.sha256(stored).hexdigest()
    summary = summarise(FeedbackStore(store_dir))
    assert summary["answers"] == 2 and summary["overturned"] == 1
    assert summary["per_model_label"][result["label"]][f"-> {other}"] == 1


def test_feedback_refuses_an_unknown_class_an_expired_image_and_a_bad_box(client, synthetic_root):
    client, store_dir = client
    (result,) = _inspect(client, sorted(synthetic_root.glob("ok/*.png"))[:1])
    wrong = client.post("/feedback", json={"id": result["id"], "label": "dent"})
    assert wrong.status_code == 422
    assert "'dent' is not a class" in wrong.json()["detail"] and "scratch" in wrong.json()["detail"]
    gone = client.post("/feedback", json={"id": "0" * 32, "label": "ok"})
    assert gone.status_code == 404 and "inspect it again" in gone.json()["detail"]
    assert FeedbackStore(store_dir).count() == 0


def _detect_store(tmp_path: Path) -> FeedbackStore:
    """A detect model's store: an NG answer with a drawn box, an OK answer, an NG without
    a box, and an image answered twice (the later answer wins)."""
    store = FeedbackStore(tmp_path / "store")
    blank = np.full((40, 60, 3), 90)
    marked = blank.copy()
    marked[10:20, 30:50] = 250
    output = {"label": "ok", "ok": True, "ng_score": 0.1}
    box = {"x": 30.0, "y": 10.0, "width": 20.0, "height": 10.0, "label": "scratch"}
    answers = [
        ("a.png", marked, {"label": "scratch", "ok": False, "boxes": [box]}),
        ("b.png", blank, {"label": "ok", "ok": True, "boxes": []}),
        ("c.png", blank + 20, {"label": "defect", "ok": False, "boxes": []}),
        ("b.png", blank, {"label": "ok", "ok": True, "boxes": []}),
    ]
    for name, array, answer in answers:
        store.add("feedback", name, _png(array), "detect", "m", output, answer=answer)
    return store


def test_review_exports_a_coco_dataset_that_defectkit_reads(tmp_path):
    from defectkit.data.formats import read_dataset

    store = _detect_store(tmp_path)
    result = export_dataset(store, tmp_path / "export")
    assert result["layout"] == "coco" and result["images"] == 2
    assert result["left_out"] == ["c.png"]  # NG without a box: cannot teach a box
    dataset = read_dataset(tmp_path / "export")
    assert dataset.layout == "coco"
    by_label = {s.label: s for s in dataset.samples}
    assert set(by_label) == {"ok", "scratch"}
    (box,) = by_label["scratch"].boxes
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((30, 10, 50, 20), abs=1e-6)
    with pytest.raises(FileExistsError):
        export_dataset(store, tmp_path / "export")


def test_review_command_prints_overturned_calls_and_exports_class_folders(
    client, synthetic_root, tmp_path, capsys
):
    from defectkit.cli import main
    from defectkit.data.formats import read_dataset

    client, store_dir = client
    paths = sorted(synthetic_root.glob("scratch/*.png"))[:3]
    answers = ["scratch", "ok", "scratch"]
    for result, label in zip(_inspect(client, paths), answers, strict=True):
        client.post("/feedback", json={"id": result["id"], "label": label})
    assert main(["review", str(store_dir), "--export", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert "3 operator answer(s)" in out and "3 image(s)" in out
    dataset = read_dataset(tmp_path / "again")
    assert dataset.layout == "class_folders"
    assert sorted(s.label for s in dataset.samples) == sorted(answers)


def test_metrics_are_prometheus_text_and_count_what_was_inspected(client, synthetic_root):
    from prometheus_client.parser import text_string_to_metric_families

    client, _ = client
    _inspect(client, sorted(synthetic_root.glob("ok/*.png"))[:4])
    client.post("/inspect", files=[("files", ("x.txt", b"not an image", "text/plain"))])
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    inspected = sum(
        s.value for s in families["defectkit_inspections"].samples if s.name.endswith("_total")
    )
    assert inspected == 4
    (rejected,) = [s for s in families["defectkit_rejected"].samples if s.name.endswith("_total")]
    assert rejected.value == 1
    count = next(
        s for s in families["defectkit_inspect_seconds"].samples if s.name.endswith("_count")
    )
    assert count.value == 4


def test_psi_matches_a_hand_worked_value():
    expected = np.arange(100.0)  # ten deciles of 10% each
    actual = np.r_[np.full(50, 1.0), np.full(50, 15.0)]  # half in the first, half in the second
    # (0.5 - 0.1) ln 5 twice, and eight emptied deciles at (1e-4 - 0.1) ln(1e-4 / 0.1)
    hand = 2 * 0.4 * np.log(5) + 8 * (1e-4 - 0.1) * np.log(1e-3)
    assert psi(expected, actual) == pytest.approx(hand, rel=1e-9)
    assert psi(expected, expected) == pytest.approx(0.0, abs=1e-12)


def _brighter(path: Path, shift: int) -> Image.Image:
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    return Image.fromarray(np.clip(array + shift, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("paired", [True, False])
def test_a_runs_baseline_offers_templates_only_to_a_model_that_takes_them(tmp_path, paired):
    """A dataset with templates (DeepPCB): a run with detect.reference=true gets each
    calibration image's template for its baseline; one trained with reference=false gets
    none (they would be stacked into a 6-channel input the network cannot take)."""
    from defectkit.config import load_config, save_config
    from defectkit.data.formats import read_dataset
    from defectkit.data.splits import Split, save_manifest
    from defectkit.data.synthetic import make_paired_set
    from defectkit.runtime.baseline import baseline_images

    root = make_paired_set(tmp_path / "pcb", count=8, size=32)
    dataset = read_dataset(root)
    config = load_config(None, ["task=detect", f"data.root={root}", f"detect.reference={paired}"])
    samples = tuple(dataset.samples)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(config, run_dir / "config.yaml")
    split = Split(train=samples[:5], val=samples[5:7], test=samples[7:])
    save_manifest(split, dataset, run_dir / "split.json", config.split)
    calibration, training, references = baseline_images(run_dir)
    assert calibration == [s.image for s in samples[5:7]]
    assert training == [s.image for s in samples[:5]]
    assert references == ([s.reference for s in samples[5:7]] if paired else None)


def test_a_run_folder_with_a_removed_key_is_refused_naming_its_config(tmp_path):
    """A run's config.yaml holding a key this version no longer has: the error names the
    file and the key, and says how to mend it."""
    from defectkit.config import ConfigError
    from defectkit.runtime.baseline import baseline_images

    (tmp_path / "split.json").write_text("{}")
    (tmp_path / "config.yaml").write_text("task: detect\ndetect:\n  old_knob: 3\n")
    with pytest.raises(ConfigError) as raised:
        baseline_images(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / "config.yaml") in message
    assert "detect.old_knob" in message and "delete the named keys" in message


def test_a_model_without_a_reference_refuses_one(classify_bundle, synthetic_root):
    """References given by hand to a model of the image alone are refused, not stacked."""
    from defectkit.runtime.inspector import Inspector

    inspector = Inspector(classify_bundle)
    paths = sorted(synthetic_root.rglob("*.png"))[:4]
    images = [Image.open(p).convert("RGB") for p in paths]
    with pytest.raises(ValueError, match="inspects each image alone"):
        inspector.predict_images(images, [p.name for p in paths], images)
    with pytest.raises(ValueError, match="inspects each image alone"):
        build_baseline(inspector, paths, paths, calibration_references=paths)


def test_drift_warns_on_shifted_images_and_not_on_the_calibration_images(
    classify_bundle, synthetic_root
):
    from defectkit.runtime.inspector import Inspector

    inspector = Inspector(classify_bundle)
    paths = sorted(synthetic_root.rglob("*.png"))
    baseline = build_baseline(inspector, paths, paths)
    assert baseline["calibration_images"] == len(paths) == baseline["training_images"]

    def fed(images) -> dict:
        monitor = DriftMonitor(baseline, window=100, min_count=20)
        for image, prediction in zip(
            images,
            inspector.predict_images(images, [str(i) for i in range(len(images))]),
            strict=True,
        ):
            monitor.observe(prediction, image, 0.01)
        return monitor.state()

    same = fed([Image.open(p).convert("RGB") for p in paths])
    assert same["warnings"] == [] and same["window"] == len(paths)
    assert all(s["psi"] < 0.05 for s in same["statistics"].values())
    shifted = fed([_brighter(p, 70) for p in paths])
    assert shifted["statistics"]["brightness"]["psi"] > 0.25
    assert any(w.startswith("brightness has drifted") for w in shifted["warnings"])
    assert shifted["statistics"]["width"]["psi"] == pytest.approx(0.0, abs=1e-12)


def test_training_from_the_command_line_writes_the_baseline(synthetic_root, tmp_path, capsys):
    from defectkit.cli import main
    from defectkit.runtime.monitor import read_baseline

    code = main(
        [
            "train",
            *("--set", f"data.root={synthetic_root}", "--set", "data.image_size=64"),
            *("--set", "train.epochs=1", "--set", f"out_dir={tmp_path}", "--set", "name=run"),
        ]
    )
    assert code == 0
    run = next(tmp_path.glob("run*"))
    baseline = read_baseline(run / "bundle")
    split = json.loads((run / "split.json").read_text())
    assert baseline["calibration_images"] == len(split["val"]) > 0
    assert baseline["training_images"] == len(split["train"])
    assert "monitoring baseline" in capsys.readouterr().out


def test_shadow_mode_logs_every_disagreement_and_answers_with_the_current_model(
    classify_bundle, synthetic_root, tmp_path
):
    """A candidate whose classes are listed in another order calls the same images
    differently: each disagreement is in the store, the answers are the current model's."""
    import shutil

    from fastapi.testclient import TestClient

    candidate = tmp_path / "candidate"
    shutil.copytree(classify_bundle, candidate)
    meta = json.loads((candidate / "bundle.json").read_text())
    meta["classes"] = meta["classes"][1:] + meta["classes"][:1]
    (candidate / "bundle.json").write_text(json.dumps(meta))
    app = create_app(classify_bundle, workers=1, feedback=tmp_path / "s", candidate=candidate)
    paths = sorted(synthetic_root.rglob("*.png"))[:6]
    with TestClient(app) as client:
        results = _inspect(client, paths)
        alone = TestClient(create_app(classify_bundle, workers=1, feedback=tmp_path / "t"))
        assert [r["label"] for r in results] == [r["label"] for r in _inspect(alone, paths)]
        app.state.shadow_pool.shutdown(wait=True)
    shadow = FeedbackStore(tmp_path / "s").records("shadow")
    assert len(shadow) == len(paths)  # a rotated class list changes every call
    for record, result in zip(shadow, results, strict=True):
        assert record["model_label"] == result["label"]
        assert record["candidate"]["label"] != result["label"]


KILL_SCRIPT = """
import sys, uvicorn
from defectkit.serve import create_app
app = create_app(sys.argv[1], workers=1, feedback=sys.argv[2])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""


def test_the_store_keeps_every_acknowledged_record_when_the_service_is_killed(
    classify_bundle, synthetic_root, tmp_path
):
    """kill -9 during a burst of feedback writes from several clients: every answer the
    service acknowledged is in the store with its image whole; nothing half-written."""
    import httpx

    from tests.test_serve import _free_port

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    store_dir = tmp_path / "store"
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(classify_bundle), str(store_dir), str(port)],
        cwd=Path(__file__).parent.parent,
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(url + "health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        paths = sorted(synthetic_root.rglob("*.png"))[:8]
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
        ids = [r["id"] for r in httpx.post(url + "inspect", files=files).json()["results"]]
        acknowledged, stop = [], threading.Event()

        def burst(worker: int) -> None:
            n = 0
            with httpx.Client(timeout=10) as session:
                while not stop.is_set():
                    note = f"{worker}-{n}"
                    try:
                        answer = session.post(
                            url + "feedback",
                            json={"id": ids[n % len(ids)], "label": "ok", "note": note},
                        )
                    except httpx.HTTPError:
                        return
                    if answer.status_code == 200:
                        acknowledged.append((answer.json()["stored"], note))
                    n += 1

        threads = [threading.Thread(target=burst, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        while len(acknowledged) < 40 and time.time() < deadline:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        stop.set()
        for thread in threads:
            thread.join(15)
    finally:
        process.kill()
        process.wait(10)
    assert len(acknowledged) >= 40
    records = {r["id"]: r for r in FeedbackStore(store_dir).records()}
    for stored, note in acknowledged:
        assert records[stored]["note"] == note
    sent = {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    for record in records.values():
        data = (store_dir / record["image_file"]).read_bytes()
        assert (
            hashlib.sha256(data).hexdigest() == record["image_sha256"]
            and record["image_sha256"] in sent
        )


def test_mcnemar_matches_hand_worked_values():
    from defectkit.metrics import mcnemar

    # 8 images only A gets right, 2 only B: exact p = 2 P(X <= 2 | n=10, 1/2)
    test = mcnemar(8, 2)
    assert test["p_exact"] == pytest.approx(2 * (1 + 10 + 45) / 1024, rel=1e-9)
    assert test["chi2"] == pytest.approx((6 - 1) ** 2 / 10, rel=1e-12)
    assert mcnemar(0, 0)["p_exact"] == 1.0


def test_compare_pairs_two_bundles_decisions_on_the_same_images(
    classify_bundle, synthetic_root, tmp_path
):
    from defectkit.cli import main
    from defectkit.runtime.inspector import Inspector
    from tests.conftest import _train

    other = _train(
        "classify",
        None,
        tmp_path / "other",
        [f"data.root={synthetic_root}", "data.image_size=64", "train.epochs=2", "split.seed=3"],
    )
    out = tmp_path / "compare"
    assert (
        main(
            [
                "compare",
                str(classify_bundle),
                str(other),
                "--data",
                str(synthetic_root),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "compare.json").read_text())
    paths = sorted(synthetic_root.rglob("*.png"))
    assert result["images"] == len(paths)
    # by hand: each model's calls through its own Inspector
    calls = [
        {p.image: p.label for p in Inspector(bundle).predict(paths)}
        for bundle in (classify_bundle, other)
    ]
    truth = {str(p): p.parent.name for p in paths}
    only_a = sum(calls[0][i] == t != calls[1][i] for i, t in truth.items())
    only_b = sum(calls[1][i] == t != calls[0][i] for i, t in truth.items())
    assert (result["mcnemar"]["only_a"], result["mcnemar"]["only_b"]) == (only_a, only_b)
    assert result["flipped"] == sum(calls[0][i] != calls[1][i] for i in truth)
    accuracy = result["metrics"]["a"]["accuracy"]
    assert result["decision_accuracy"]["a"] == pytest.approx(accuracy, rel=1e-9)
    assert result["deltas"]["accuracy"]["delta"] == pytest.approx(
        result["metrics"]["b"]["accuracy"] - accuracy, abs=1e-12
    )
    assert "per_class.spot.recall" in result["deltas"]
    assert all(v > 0 for v in result["ms_per_image_batch1"].values())
    page = (out / "report.html").read_text()
    assert "McNemar" in page and ("flips" in page or "No decision flips" in page)
