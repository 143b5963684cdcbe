"""Service under load (PROTOCOLS.md `serve-load`): `defectkit serve` with the default classify
model (NEU-6) on loopback, N concurrent clients for S seconds, each sending real NEU test
images one per request, with malformed uploads mixed in (non-images, truncated files, huge
dimensions, a wrong field name, empty files), operator feedback on a share of the inspected
images (POST /feedback, into a feedback store in a temporary folder) and a scraper reading
/metrics (parsed with the Prometheus client's parser) and /monitor once a second. Every
malformed upload must get a 4xx and every good request a 200; anything else (5xx,
timeouts, refused connections, an unparsable scrape) is an error.

    python benchmarks/serve_load.py [--backends onnx,torch] [--clients 20] [--seconds 60]

Clients and service share this machine's cores. Run inference_speed.py (or export the bundle)
first for the ONNX backend; the script exports it when model.onnx is missing.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx
from common import REPO, RUNS, save_results
from inference_speed import percentile, test_images
from PIL import Image

BUNDLE = RUNS / "neu6-default" / "bundle"
MALFORMED_SHARE = 0.15
FEEDBACK_SHARE = 0.1  # of the inspected images, answered by an "operator"


def malformed_uploads(good: bytes) -> dict[str, dict]:
    huge = io.BytesIO()
    Image.new("L", (10_000, 10_000), 0).save(huge, format="PNG")  # 100 Mpx, ~100 kB
    return {
        "not_an_image": {"files": [("files", ("report.txt", b"OK,12\nNG,3\n", "text/plain"))]},
        "truncated": {"files": [("files", ("cut.jpg", good[: len(good) // 3], "image/jpeg"))]},
        "huge_dimensions": {"files": [("files", ("huge.png", huge.getvalue(), "image/png"))]},
        "wrong_field": {"files": [("image", ("a.jpg", good, "image/jpeg"))]},
        "empty": {"files": [("files", ("empty.jpg", b"", "image/jpeg"))]},
    }


def peak_rss_mb(pid: int) -> float:
    """The process's high-water mark of resident memory (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def client(
    url: str, stop: float, goods: list[bytes], bad: dict, seed: int, log: list, share: float
) -> None:
    rng = random.Random(seed)
    with httpx.Client(timeout=30) as session:
        while time.time() < stop:
            if rng.random() < MALFORMED_SHARE:
                kind = rng.choice(sorted(bad))
                payload = bad[kind]
            else:
                kind, payload = "image", {"files": [("files", ("part.jpg", rng.choice(goods)))]}
            tick = time.perf_counter()
            answer = None
            try:
                answer = session.post(url + "/inspect", **payload)
                status = answer.status_code
            except httpx.HTTPError as error:
                status = type(error).__name__
            log.append((kind, status, 1000 * (time.perf_counter() - tick)))
            if kind == "image" and status == 200 and rng.random() < share:
                result = answer.json()["results"][0]
                tick = time.perf_counter()
                try:
                    said = session.post(
                        url + "/feedback", json={"id": result["id"], "label": result["label"]}
                    ).status_code
                except httpx.HTTPError as error:
                    said = type(error).__name__
                log.append(("feedback", said, 1000 * (time.perf_counter() - tick)))


def scraper(url: str, stop: float, log: list) -> None:
    """/metrics and /monitor once a second, as Prometheus and the operator page would."""
    from prometheus_client.parser import text_string_to_metric_families

    with httpx.Client(timeout=30) as session:
        while time.time() < stop:
            try:
                response = session.get(url + "/metrics")
                families = list(text_string_to_metric_families(response.text))
                ok = response.status_code == 200 and any(
                    f.name == "defectkit_inspections" for f in families
                )
                ok = ok and session.get(url + "/monitor").status_code == 200
            except (httpx.HTTPError, ValueError):
                ok = False
            log.append(("scrape", 200 if ok else "failed", 0.0))
            time.sleep(1)


def run(backend: str, clients: int, seconds: float, port: int, plain: bool = False) -> dict:
    """plain: inspect requests only (no feedback, no scrapes), to see what those cost."""
    goods = [p.read_bytes() for p in test_images(RUNS / "neu6-default")[:64]]
    bad = malformed_uploads(goods[0])
    store = tempfile.mkdtemp(prefix="serve-load-feedback-")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "defectkit.cli",
            "serve",
            str(BUNDLE),
            "--port",
            str(port),
            "--backend",
            backend,
            "--feedback",
            store,
        ],
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        log: list = []
        stop = time.time() + seconds
        threads = [
            threading.Thread(
                target=client,
                args=(url, stop, goods, bad, i, log, 0.0 if plain else FEEDBACK_SHARE),
            )
            for i in range(clients)
        ] + ([] if plain else [threading.Thread(target=scraper, args=(url, stop, log))])
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        health = httpx.get(url + "/health").json()
        peak_mb = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    from defectkit.runtime.feedback import FeedbackStore

    stored = FeedbackStore(store).count()
    good = [(s, ms) for kind, s, ms in log if kind == "image"]
    feedback = [s for kind, s, _ in log if kind == "feedback"]
    scrapes = [s for kind, s, _ in log if kind == "scrape"]
    malformed = [(kind, s) for kind, s, _ in log if kind in bad]
    errors = (
        sum(s != 200 for s, _ in good)
        + sum(not (isinstance(s, int) and 400 <= s < 500) for _, s in malformed)
        + sum(s != 200 for s in feedback + scrapes)
    )
    latencies = [ms for s, ms in good if s == 200]
    return {
        "name": backend + ("_plain" if plain else ""),
        "backend": backend,
        "clients": clients,
        "seconds": seconds,
        "requests": len(log),
        "images_inspected": len(latencies),
        "requests_per_second": len(log) / seconds,
        "feedback_sent": len(feedback),
        "feedback_stored": stored,
        "metrics_scrapes": len(scrapes),
        "errors": errors,
        "p50_ms": statistics.median(latencies),
        "p95_ms": percentile(latencies, 0.95),
        "peak_rss_mb": peak_mb,
        "malformed_sent": len(malformed),
        "malformed_rejected": sum(isinstance(s, int) and 400 <= s < 500 for _, s in malformed),
        "malformed_status": {
            kind: sorted({str(s) for k, s in malformed if k == kind}) for kind in sorted(bad)
        },
        "service_alive_after": health["status"] == "ok",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="onnx,torch")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--plain", action="store_true", help="also a run per backend without feedback / scrapes"
    )
    args = parser.parse_args()
    if not (BUNDLE / "model.onnx").is_file():
        from defectkit.runtime.export import export_onnx

        export_onnx(BUNDLE)
    runs = []
    for backend in args.backends.split(","):
        for plain in (False, True) if args.plain else (False,):
            result = run(backend, args.clients, args.seconds, args.port, plain)
            print(result, flush=True)
            runs.append(result)
    command = (
        f"python benchmarks/serve_load.py --backends {args.backends} --clients {args.clients} "
        f"--seconds {args.seconds:g}" + (" --plain" if args.plain else "")
    )
    save_results("serve-load", runs, command)


if __name__ == "__main__":
    main()
