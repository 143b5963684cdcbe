"""Shared by the benchmark scripts: run `defectkit train` in a fresh process per run (so peak
memory is that run's own), collect metrics.json, and write benchmarks/results/<protocol>.json
and the protocol's table in benchmarks/RESULTS.md."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED_DATA = REPO.parent / "shared" / "data"
RUNS = HERE / "runs"


def machine() -> str:
    from defectkit.runs import machine_summary

    return machine_summary()


def train(name: str, recipe: str, overrides: list[str]) -> tuple[dict, str]:
    """Train one run from scratch in its own process; returns (metrics, command)."""
    run_dir = RUNS / name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    args = [
        "defectkit",
        "train",
        "--config",
        recipe,
        "--set",
        f"out_dir={RUNS}",
        "--set",
        f"name={name}",
        *[a for o in overrides for a in ("--set", o)],
    ]
    print(f"\n== {name}: {shlex.join(args)}", flush=True)
    tick = time.perf_counter()
    subprocess.run([sys.executable, "-m", "defectkit.cli", *args[1:]], check=True, cwd=REPO)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["wall_seconds"] = time.perf_counter() - tick
    return metrics, shlex.join(args)


# what every anomaly benchmark reports per run (PROTOCOLS.md mt-anomaly keys and a few more)
ANOMALY_KEYS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_max",
    "f1_calibrated",
    "fit_seconds",
    "ms_per_image",
    "peak_rss_mb",
    "model_mb",
    "threshold",
)


def parse_run_args(doc: str | None, runs: dict) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--runs", default=",".join(runs), help="comma-separated run names")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="take runs whose folder already holds metrics.json as they are",
    )
    return parser.parse_args()


def train_or_reuse(name: str, recipe: str, overrides: list[str], reuse: bool) -> tuple[dict, str]:
    """`train`, unless `reuse` and the run folder already holds its metrics.json."""
    metrics_file = RUNS / name / "metrics.json"
    if reuse and metrics_file.is_file():
        command = shlex.join(
            [
                "defectkit",
                "train",
                "--config",
                recipe,
                *[a for o in overrides for a in ("--set", o)],
            ]
        )
        return json.loads(metrics_file.read_text()), command
    return train(name, recipe, overrides)


def cpu_speed(run_dir: Path, root: Path) -> dict:
    """ms per image and peak memory of a segment run's model on this CPU, in a fresh
    process (benchmarks/segment_speed.py); runs trained on a GPU are timed here too."""
    out = subprocess.run(
        [sys.executable, str(HERE / "segment_speed.py"), str(run_dir), "--root", str(root)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def trained_on(metrics: dict) -> str:
    """ "GPU" or "CPU", from the device a run was trained on."""
    return "GPU" if str(metrics.get("device", "cpu")).startswith("cuda") else "CPU"


def save_results(protocol: str, runs: list[dict], command: str) -> dict:
    """Merge these runs into results/<protocol>.json (runs of other names are kept). Each
    new run is stamped with the date its numbers were written and this machine (with
    --reuse, a run trained earlier is read again today): a file merges runs of several
    days, and its own date and command are those of the last merge."""
    path = HERE / "results" / f"{protocol}.json"
    old = json.loads(path.read_text())["runs"] if path.exists() else []
    names = {r["name"] for r in runs}
    today, here = time.strftime("%Y-%m-%d"), machine()
    runs = [{"date": today, "machine": here, **r} for r in runs]
    payload = {
        "protocol": protocol,
        "date": today,
        "machine": here,
        "command": command,
        "runs": [r for r in old if r["name"] not in names] + runs,
    }
    path.write_text(json.dumps(payload, indent=1))
    return payload


def write_section(protocol: str, text: str) -> None:
    """Replace this protocol's section of RESULTS.md (between its markers), or append it."""
    path = HERE / "RESULTS.md"
    body = path.read_text() if path.exists() else "# Benchmark results\n\n"
    block = f"<!-- {protocol} -->\n{text.strip()}\n<!-- /{protocol} -->"
    pattern = re.compile(rf"<!-- {re.escape(protocol)} -->.*?<!-- /{re.escape(protocol)} -->", re.S)
    body = pattern.sub(lambda _: block, body) if pattern.search(body) else body + block + "\n\n"
    path.write_text(body)


def table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
