"""Shared by the benchmark scripts: run `defectkit train` in a fresh process per run (so peak
memory is that run's own), collect metrics.json with the images it trained and tested on,
and write benchmarks/results/<protocol>.json, each run stamped with the commit, date,
machine and command that made it; RESULTS.md and the README's table are then generated
from the JSON (tables.py)."""

from __future__ import annotations

import argparse
import json
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


def git_sha() -> str:
    """The commit measured: HEAD, with "+dirty" when the package has uncommitted changes
    (tables.py then marks the run stale: no commit holds the code that made it)."""
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "defectkit", "constraints.txt"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return sha + ("+dirty" if changed else "")


def split_counts(run_dir: Path) -> dict[str, int]:
    """Images per part of a run's split.json (train / val / test)."""
    manifest = json.loads((run_dir / "split.json").read_text())
    return {part: len(manifest.get(part, [])) for part in ("train", "val", "test")}


def train(name: str, recipe: str, overrides: list[str]) -> tuple[dict, str]:
    """Train one run from scratch in its own process; returns (metrics, command), the metrics
    with the run's wall time and the yardstick step time before and after it."""
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
    before = yardstick_step_seconds()
    tick = time.perf_counter()
    subprocess.run([sys.executable, "-m", "defectkit.cli", *args[1:]], check=True, cwd=REPO)
    wall = time.perf_counter() - tick
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["wall_seconds"] = wall
    # the machine's speed just before and just after the run (yardstick_step_seconds)
    metrics["yardstick_step_s"] = [before, yardstick_step_seconds()]
    metrics["images"] = split_counts(run_dir)
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
        metrics = json.loads(metrics_file.read_text())
        metrics["images"] = split_counts(RUNS / name)
        return metrics, command
    return train(name, recipe, overrides)


def calibrated(
    protocol: str, name: str, source: str, overrides: list[str], what: str, reuse: bool
) -> tuple[dict, str, str]:
    """A row that trains nothing: run `source`'s folder copied (checkpoints, split, config;
    not its evaluation) to <protocol>-<name> and `defectkit calibrate`d with `overrides`, in
    its own process (the command's progress, its before / after summary and the monitoring
    baseline). Returns (metrics, command, note)."""
    import shutil

    source_dir, run_dir = RUNS / f"{protocol}-{source}", RUNS / f"{protocol}-{name}"
    command = shlex.join(
        ["defectkit", "calibrate", str(run_dir), *[a for o in overrides for a in ("--set", o)]]
    )
    note = f"{what}; calibrated, not trained: its training is run {source}'s"
    if not (reuse and (run_dir / "metrics.json").is_file()):
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(
            source_dir, run_dir, ignore=shutil.ignore_patterns("before", "tensorboard", "*_before*")
        )
        print(f"\n== {name}: {command}", flush=True)
        cli = [sys.executable, "-m", "defectkit.cli", *shlex.split(command)[1:]]
        subprocess.run(cli, check=True, cwd=REPO)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["images"] = split_counts(run_dir)
    return metrics, command, note


def row_run(
    protocol: str,
    recipe: str,
    name: str,
    trained: dict[str, tuple[list[str], str]],
    calibrated_rows: dict[str, tuple[str, list[str], str]],
    root: Path,
    reuse: bool,
) -> tuple[dict, str, str]:
    """(metrics, command, note) of a benchmark row: a `calibrated` one (calibrated_rows:
    name -> (the run, calibrate settings, what it is)) or one trained from `recipe` with the
    row's overrides on the data at `root` (trained: name -> (overrides, what it is))."""
    if name in calibrated_rows:
        return calibrated(protocol, name, *calibrated_rows[name], reuse)
    overrides, what = trained[name]
    metrics, command = train_or_reuse(
        f"{protocol}-{name}", recipe, [f"data.root={root}", *overrides], reuse
    )
    return metrics, command, what


def detect_row(name: str, metrics: dict, command: str, note: str) -> dict:
    """What every detect benchmark row says besides its accuracy: what ran, on what, for
    how long, on how fast a machine, and the box thresholds it shipped."""
    return {
        "name": name,
        "command": command,
        "note": note,
        "images": metrics["images"],
        "trained_on": trained_on(metrics),
        "epochs": metrics["epochs_run"],
        "train_seconds": metrics["train_seconds"],
        "yardstick_step_s": metrics.get("yardstick_step_s"),
        "peak_rss_mb": metrics["peak_rss_mb"],
        "box_rule": metrics.get("box_rule"),
        "box_thresholds": metrics.get("box_thresholds"),
    }


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


def yardstick_step_seconds(steps: int = 6) -> float:
    """This machine's speed now, as one fixed piece of work: the median time of a training
    step of the NEU-DET recipe's graph (FCOS on Lite0 + FPN, random weights, batch 8 of
    256 px, channels-last, 2 threads) after one warm-up step. Recorded beside a run's
    train_seconds, it tells a slow day from a slow recipe: this 2-core machine's speed has
    varied about 2x between days (0.65 s and 1.2 s a step)."""
    import statistics

    import torch

    from defectkit.config import DetectConfig, ModelConfig
    from defectkit.models.detector import build_detector

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    model = build_detector(
        ModelConfig(backbone="tf_efficientnet_lite0"), DetectConfig(), 6, 256, pretrained=False
    )[0]
    model = model.train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    images = [torch.rand(3, 256, 256) for _ in range(8)]
    boxes = torch.tensor([[10.0, 20.0, 90.0, 120.0], [50.0, 50.0, 200.0, 90.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 3])} for _ in images]
    times = []
    for _ in range(steps + 1):
        tick = time.perf_counter()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - tick)
    torch.set_num_threads(threads)
    return float(statistics.median(times[1:]))


def trained_on(metrics: dict) -> str:
    """ "GPU" or "CPU", from the device a run was trained on."""
    return "GPU" if str(metrics.get("device", "cpu")).startswith("cuda") else "CPU"


def save_results(protocol: str, runs: list[dict], command: str) -> dict:
    """Merge these runs into results/<protocol>.json (runs of other names are kept), then
    regenerate RESULTS.md and the README's table from every results file. Each new run is
    stamped with what made it: the commit (git_sha), the date, this machine, its command
    (the script's, where the run has none of its own); its image counts come with it
    (`images`, from the run's split.json). A file's own date and command are its last
    merge's."""
    from tables import write_tables

    path = HERE / "results" / f"{protocol}.json"
    old = json.loads(path.read_text())["runs"] if path.exists() else []
    names = {r["name"] for r in runs}
    today, here, sha = time.strftime("%Y-%m-%d"), machine(), git_sha()
    runs = [{"date": today, "machine": here, "git_sha": sha, "command": command, **r} for r in runs]
    payload = {
        "protocol": protocol,
        "date": today,
        "machine": here,
        "command": command,
        "runs": [r for r in old if r["name"] not in names] + runs,
    }
    path.write_text(json.dumps(payload, indent=1))
    write_tables()
    return payload


def table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
