"""The inspector service: its API with malformed uploads, and the operator page end to end in
headless Chromium."""

import io
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from defectkit.serve import create_app, decode_upload


@pytest.fixture(scope="module")
def client(classify_bundle):
    from fastapi.testclient import TestClient

    return TestClient(create_app(classify_bundle, workers=1, max_upload_mb=1, max_pixels=10**6))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions (a decompression bomb's header), without pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _png(size=(64, 64), colour=128) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_inspect_one_and_many_images(client, synthetic_root):
    paths = sorted(synthetic_root.glob("spot/*.png"))[:3]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    response = client.post("/inspect", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["image"] for r in results] == [p.name for p in paths]
    for r in results:
        assert r["label"] in ("ok", "scratch", "spot")
        assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["ok"] == (r["label"] == "ok") and (r["width"], r["height"]) == (64, 64)


def test_health_model_and_openapi(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["task"] == "classify"
    model = client.get("/model").json()
    assert model["classes"] == ["ok", "scratch", "spot"] and "folder" not in model
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/inspect", "/health", "/model"} <= set(paths)
    assert "drop" in client.get("/").text.lower()


@pytest.mark.parametrize(
    ("files", "status", "message"),
    [
        ([("files", ("notes.txt", b"hello, not an image", "text/plain"))], 415, "not an image"),
        ([("files", ("cut.png", _png()[:60], "image/png"))], 400, "truncated or corrupt"),
        ([("files", ("huge.png", _png((2000, 1000), 0), "image/png"))], 413, "over the limit"),
        ([("files", ("empty.png", b"", "image/png"))], 400, "empty"),
        ([("files", ("bomb.png", _png_header_only(40_000, 40_000), "image/png"))], 413, "bomb"),
        ([("image", ("a.png", _png(), "image/png"))], 422, "field `files`"),
        ([("files", ("big.png", os.urandom(2 * 2**20), "image/png"))], 413, "MB"),
    ],
)
def test_malformed_uploads_get_a_clear_4xx_and_the_service_keeps_serving(
    client, files, status, message
):
    response = client.post("/inspect", files=files)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    ok = client.post("/inspect", files=[("files", ("fine.png", _png(), "image/png"))])
    assert ok.status_code == 200


def test_one_bad_file_among_several_gets_its_own_error_and_the_rest_are_inspected(
    client, synthetic_root
):
    good = sorted(synthetic_root.glob("spot/*.png"))[:2]
    files = [
        ("files", (good[0].name, good[0].read_bytes(), "image/png")),
        ("files", ("note.txt", b"a note, not an image", "text/plain")),
        ("files", (good[1].name, good[1].read_bytes(), "image/png")),
    ]
    response = client.post("/inspect", files=files)
    assert response.status_code == 207, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["ok", "error", "ok"]
    assert [results[0]["image"], results[2]["image"]] == [good[0].name, good[1].name]
    assert results[1]["image"] == "note.txt" and results[1]["code"] == 415
    assert results[1]["detail"].startswith("not an image")  # the name is not repeated
    both_bad = client.post("/inspect", files=[files[1], ("files", ("b.png", b"", "image/png"))])
    assert both_bad.status_code == 415
    assert [r["code"] for r in both_bad.json()["results"]] == [415, 400]


def test_favicon_is_served(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response.headers["content-type"] == "image/x-icon"
    assert Image.open(io.BytesIO(response.content)).size == (32, 32)


def test_decode_upload_names_the_file():
    with pytest.raises(Exception, match=r"part-17\.jpg: not an image"):
        decode_upload("part-17.jpg", b"GIF??", 10**6, 10**6)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("DEFECTKIT_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed: `apt-get install chromium` (CI does)")
        pytest.skip("no chromium here (Debian: apt-get install chromium)")
    return path


def _serve(bundle: Path):
    """The service on a free loopback port, for as long as the generator lives."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(bundle, workers=1), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def live_service(anomaly_bundle):
    yield from _serve(anomaly_bundle)


def _browser(p):
    return p.chromium.launch(
        executable_path=_chromium(),
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    )


def test_operator_page_in_headless_chromium(live_service, tiles, tmp_path):
    """Pick a defect-free and a defect image on the page: the verdict banner, label, overlay
    and the session list show what /inspect says for them."""
    import httpx
    from playwright.sync_api import sync_playwright

    _chromium()
    good = sorted(tiles.glob("MT_Ok/Imgs/*.jpg"))[-1]
    bad = sorted(tiles.glob("MT_Spot/Imgs/*.jpg"))[0]
    expected = {}
    for path in (good, bad):
        answer = httpx.post(
            live_service + "inspect", files=[("files", (path.name, path.read_bytes()))]
        ).json()["results"][0]
        expected[path.name] = "OK" if answer["ok"] else "NG"

    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page()
        page.goto(live_service)
        page.wait_for_function("document.getElementById('model').textContent.includes('anomaly')")
        page.set_input_files("#pick", [str(good), str(bad)])
        page.wait_for_function("document.querySelectorAll('#history tr').length === 2")
        rows = page.locator("#history tr")
        # newest first
        assert rows.nth(0).locator("td").nth(1).inner_text() == bad.name
        assert rows.nth(0).locator("td").nth(2).inner_text() == expected[bad.name]
        assert rows.nth(1).locator("td").nth(2).inner_text() == expected[good.name]
        assert page.locator("#verdict").inner_text() == expected[bad.name]
        assert page.locator("#view").get_attribute("src").startswith("data:image/png;base64,")
        rows.nth(1).click()  # back to the first image
        assert page.locator("#verdict").inner_text() == expected[good.name]
        assert "inspected" in page.locator("#counts").inner_text()
        page.set_input_files(
            "#pick", files=[{"name": "junk.png", "mimeType": "image/png", "buffer": b"junk"}]
        )
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "junk.png: not an image" in page.locator("#error").inner_text()
        shot = Path(tmp_path / "page.png")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000


def test_operator_page_never_shows_a_stale_verdict(live_service, tiles, tmp_path):
    """An error replaces the verdict and picture; several files at once are inspected
    together, a bad one shown on its own row; the empty page says what to do."""
    from playwright.sync_api import sync_playwright

    good = sorted(tiles.glob("MT_Ok/Imgs/*.jpg"))[-1]
    bad = sorted(tiles.glob("MT_Spot/Imgs/*.jpg"))[0]
    note = {"name": "note.txt", "mimeType": "text/plain", "buffer": b"not an image"}
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page()
        page.goto(live_service)
        page.wait_for_function("document.getElementById('model').textContent.includes('anomaly')")
        assert (
            page.locator("#empty").is_visible()
            and "Drop images" in page.locator("#empty").inner_text()
        )
        page.set_input_files("#pick", [str(bad)])
        page.wait_for_function("document.querySelectorAll('#history tr').length === 1")
        assert page.locator("#verdict").inner_text() in ("OK", "NG")
        assert page.locator("#view").is_visible()
        page.set_input_files("#pick", files=[note])
        page.wait_for_function("document.querySelectorAll('#history tr').length === 2")
        verdict = page.locator("#verdict")
        assert verdict.inner_text() == "NOT INSPECTED"
        assert verdict.get_attribute("data-state") == "error"
        assert not page.locator("#view").is_visible()  # the old picture is gone
        error = page.locator("#error").inner_text()
        assert error.startswith("note.txt: not an image") and "note.txt: note.txt" not in error
        # three files in one go: the good ones inspected, the bad one on its own row
        page.set_input_files(
            "#pick",
            files=[
                {"name": good.name, "mimeType": "image/jpeg", "buffer": good.read_bytes()},
                note,
                {"name": bad.name, "mimeType": "image/jpeg", "buffer": bad.read_bytes()},
            ],
        )
        page.wait_for_function("document.querySelectorAll('#history tr').length === 5")
        rows = page.locator("#history tr")
        assert [rows.nth(i).locator("td").nth(2).inner_text() for i in range(3)][1] == "error"
        assert rows.nth(0).locator("td").nth(1).inner_text() == bad.name
        assert rows.nth(2).locator("td").nth(1).inner_text() == good.name
        assert page.locator("#verdict").inner_text() in ("OK", "NG")  # the last file's
        assert "1 not inspected" not in page.locator("#counts").inner_text()
        assert "2 not inspected" in page.locator("#counts").inner_text()
        rows.nth(1).click()  # the bad file's row shows its error, not a verdict
        assert page.locator("#verdict").inner_text() == "NOT INSPECTED"
        browser.close()


@pytest.fixture(scope="module")
def paired_service(tmp_path_factory):
    """A segmenter that takes each image with its aligned template (DeepPCB-style pairs)."""
    from defectkit.config import load_config
    from defectkit.data.synthetic import make_paired_set
    from defectkit.tasks import get_task

    tmp_path = tmp_path_factory.mktemp("paired-page")
    root = make_paired_set(tmp_path / "pcb", count=16, size=64)
    config = load_config(
        None,
        [
            "task=segment",
            f"data.root={root}",
            "data.image_size=64",
            "train.epochs=1",
            "train.batch_size=8",
            "segment.encoder_depth=3",
            "segment.reference=true",
            "segment.gate=false",
            "split.method=official",
        ],
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    get_task("segment")(config, run_dir, False)
    for url in _serve(run_dir / "bundle"):
        yield url, root


def test_operator_page_sends_the_reference_a_paired_model_needs(paired_service):
    """The page shows a reference picker for a model with references, refuses to inspect
    before one is picked, then sends it with every image."""
    from playwright.sync_api import sync_playwright

    url, root = paired_service
    tested = sorted(root.rglob("*_test.jpg"))[:2]
    template = tested[0].with_name(tested[0].name.replace("_test", "_temp"))
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("document.getElementById('model').textContent.includes('segment')")
        assert page.locator("#reference").is_visible()
        page.set_input_files("#pick", [str(tested[0])])
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "pick the reference image first" in page.locator("#error").inner_text()
        page.set_input_files("#reference-pick", [str(template)])
        assert page.locator("#reference-name").inner_text() == template.name
        page.set_input_files("#pick", [str(path) for path in tested])
        # the refused first try stays in the session list as "not inspected"
        page.wait_for_function("document.querySelectorAll('#history tr').length === 3")
        assert page.locator("#error").inner_text() == ""
        assert page.locator("#verdict").inner_text() in ("OK", "NG")
        browser.close()


def test_operator_page_hides_the_reference_picker_otherwise(live_service):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page()
        page.goto(live_service)
        page.wait_for_function("document.getElementById('model').textContent.includes('anomaly')")
        assert not page.locator("#reference").is_visible()
        browser.close()


def test_operator_feedback_from_the_page_reaches_the_store(live_service, anomaly_bundle, tiles):
    """On the page an operator overturns a call, once with a box drawn over the defect: each
    answer is in the feedback store with the image and the model's call; the line monitor
    counts the images."""
    from playwright.sync_api import sync_playwright

    from defectkit.runtime.feedback import FeedbackStore
    from defectkit.serve.app import feedback_folder

    store = FeedbackStore(feedback_folder(anomaly_bundle))
    before = len(store.records("feedback"))
    image = sorted(tiles.glob("MT_Spot/Imgs/*.jpg"))[1]
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page()
        page.goto(live_service)
        page.wait_for_function("document.getElementById('model').textContent.includes('anomaly')")
        assert not page.locator("#feedback").is_visible()
        page.set_input_files("#pick", [str(image)])
        page.wait_for_function("document.querySelectorAll('#history tr').length === 1")
        assert page.locator("#feedback").is_visible() and not page.locator("#fb-class").is_visible()
        called_ok = page.locator("#verdict").inner_text() == "OK"
        page.click("#fb-ng" if called_ok else "#fb-ok")
        page.wait_for_function("document.getElementById('fb-status').textContent.includes('saved')")
        assert "the model said" in page.locator("#fb-status").inner_text()  # overturned
        # a box drawn over the middle of the picture, then NG
        page.click("#fb-draw")
        view = page.locator("#view").bounding_box()
        page.mouse.move(view["x"] + view["width"] * 0.25, view["y"] + view["height"] * 0.25)
        page.mouse.down()
        page.mouse.move(view["x"] + view["width"] * 0.75, view["y"] + view["height"] * 0.5)
        page.mouse.up()
        assert "1 box(es) drawn" in page.locator("#fb-status").inner_text()
        page.click("#fb-ng")
        page.wait_for_function(
            "document.getElementById('fb-status').textContent.includes('saved as record')"
            " && !document.getElementById('fb-status').textContent.includes('box(es)')"
        )
        page.wait_for_function("document.getElementById('monitor').textContent.includes('last')")
        assert "NG" in page.locator("#monitor").inner_text()
        browser.close()
    records = store.records("feedback")[before:]
    assert [r["image"] for r in records] == [image.name, image.name]
    assert records[0]["model_ok"] is called_ok and records[0]["answer"]["ok"] is not called_ok
    (box,) = records[1]["answer"]["boxes"]
    side = Image.open(image).size
    assert box["x"] == pytest.approx(side[0] * 0.25, rel=0.1)
    assert box["width"] == pytest.approx(side[0] * 0.5, rel=0.1)
    assert box["height"] == pytest.approx(side[1] * 0.25, rel=0.15)


@pytest.mark.parametrize("bundle", ["classify_bundle", "anomaly_bundle"])
def test_serving_a_bundle_imports_its_task_deploy_code_and_no_training(bundle, request):
    """A fresh process that starts the service on a bundle and inspects one image has
    imported its own task's deploy.py and nothing of training, evaluation, reports, plots or
    the other tasks (the static rule: the forbidden contract in pyproject.toml)."""
    import subprocess
    import sys

    folder = request.getfixturevalue(bundle)
    script = f"""
import io, json, sys
from PIL import Image
from fastapi.testclient import TestClient
from defectkit.serve import create_app
client = TestClient(create_app({str(folder)!r}, workers=1))
buffer = io.BytesIO()
Image.new("RGB", (64, 64), (90, 90, 90)).save(buffer, format="PNG")
answer = client.post("/inspect", files=[("files", ("a.png", buffer.getvalue(), "image/png"))])
assert answer.status_code == 200, answer.text
print(json.dumps(sorted(sys.modules)))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    task = json.loads((folder / "bundle.json").read_text())["task"]
    assert f"defectkit.tasks.{task}.deploy" in loaded
    ours = {m for m in loaded if m.startswith("defectkit.tasks.") and m.count(".") >= 2}
    assert ours <= {f"defectkit.tasks.{task}", f"defectkit.tasks.{task}.deploy"}, ours
    for heavy in ("defectkit.engine", "defectkit.report", "matplotlib", "sklearn", "tensorboard"):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in loaded), heavy
