"""How many images do I need? A learning curve over whole runs (`defectkit learning-curve`):
a classifier trained on k images per class (nested subsets, several seeds) for each k,
always tested on the same test images; test accuracy (mean and spread) against k, and each
class's recall against the number of its images the run trained on (the long tail)."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ACCURACY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1")


def run_name(k: int, repeat: int) -> str:
    return f"k{k}-r{repeat}"


def parse_shots(text: str) -> list[int]:
    """ "1,5,10" -> [1, 5, 10] (sorted, each once); every k a whole number >= 1."""
    try:
        shots = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--shots {text!r}: give whole numbers, e.g. --shots 1,5,10,20") from None
    if not shots or shots[0] < 1:
        raise ValueError(f"--shots {text!r}: every k must be 1 or more images per class")
    return shots


def run_record(run_dir: Path, k: int, repeat: int) -> dict[str, Any]:
    """One run's row: its accuracies, its wall time (metrics.json's total_seconds), and per
    class its recall and training image count (fewer than k where a class has fewer
    training images: the long tail)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    counts = json.loads((run_dir / "data_summary.json").read_text())["counts"]["train"]
    return {
        "name": run_name(k, repeat),
        "k": k,
        "repeat": repeat,
        "run": str(run_dir),
        "seconds": metrics["total_seconds"],
        **{key: metrics[key] for key in ACCURACY_KEYS},
        "per_class": {
            name: {"recall": row["recall"], "train_images": counts.get(name, 0)}
            for name, row in metrics["per_class"].items()
        },
    }


MODEL_FILES = ("bundle", "checkpoints")  # what a finished curve run can do without


def drop_models(run_dir: Path) -> int:
    """Remove a finished run's bundle and checkpoints (its metrics, split, predictions,
    plots and report stay); returns the bytes freed. A learning curve of 25 runs keeps
    ~350 MB of NEU models otherwise, which it never reads again."""
    import shutil

    if not (run_dir / "metrics.json").is_file():
        raise ValueError(f"{run_dir} has not finished (no metrics.json): its models stay")
    freed = 0
    for name in MODEL_FILES:
        path = run_dir / name
        if path.is_dir():
            freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            shutil.rmtree(path)
    return freed


def summarise_curve(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per k: mean and standard deviation (over the repeats, ddof 0: the spread of these
    runs) of each accuracy and of the wall time per run."""
    by_k: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_k[record["k"]].append(record)
    points = []
    for k, rows in sorted(by_k.items()):
        point: dict[str, Any] = {"k": k, "runs": len(rows)}
        for key in (*ACCURACY_KEYS, "seconds"):
            values = np.array([row[key] for row in rows], dtype=float)
            point[f"{key}_mean"] = float(values.mean())
            point[f"{key}_std"] = float(values.std())
        points.append(point)
    return {"points": points, "runs": records}


def plot_curve(summary: dict[str, Any], folder: Path) -> list[Path]:
    """accuracy.png: test accuracy against k (each run a dot, the mean a line, one standard
    deviation a band); per_class.png: each class's recall against its training images."""
    import matplotlib.pyplot as plt

    from defectkit.report import save_figure

    points, runs = summary["points"], summary["runs"]
    ks = np.array([p["k"] for p in points])
    mean = np.array([p["accuracy_mean"] for p in points])
    std = np.array([p["accuracy_std"] for p in points])
    fig, axis = plt.subplots(figsize=(6, 4))
    axis.fill_between(ks, mean - std, mean + std, alpha=0.25, label="± 1 standard deviation")
    axis.plot(ks, mean, "o-", label="mean test accuracy")
    axis.scatter([r["k"] for r in runs], [r["accuracy"] for r in runs], s=10, c="k", label="runs")
    axis.set(xlabel="training images per class (k)", ylabel="test accuracy", xscale="log")
    axis.set_xticks(ks, [str(k) for k in ks])
    axis.minorticks_off()
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    paths = [save_figure(fig, folder / "accuracy.png")]

    per_class: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for name, row in run["per_class"].items():
            per_class[name][row["train_images"]].append(row["recall"])
    fig, axis = plt.subplots(figsize=(6, 4))
    all_counts = sorted({c for by_count in per_class.values() for c in by_count})
    for name, by_count in sorted(per_class.items()):
        counts = sorted(by_count)
        axis.plot(counts, [np.mean(by_count[c]) for c in counts], "o-", label=name)
    axis.set(xlabel="training images of the class", ylabel="recall of the class (mean)")
    axis.set_xscale("log")
    axis.set_xticks(all_counts, [str(c) for c in all_counts])
    axis.minorticks_off()
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    paths.append(save_figure(fig, folder / "per_class.png"))
    return paths


def write_curve_report(summary: dict[str, Any], folder: Path) -> Path:
    from defectkit.report import embed, html_page, table

    rows = [
        [
            p["k"],
            p["runs"],
            f"{p['accuracy_mean']:.4f} ± {p['accuracy_std']:.4f}",
            f"{p['balanced_accuracy_mean']:.4f} ± {p['balanced_accuracy_std']:.4f}",
            f"{p['macro_f1_mean']:.4f} ± {p['macro_f1_std']:.4f}",
            f"{p['seconds_mean']:.1f}",
        ]
        for p in summary["points"]
    ]
    accuracy, per_class = plot_curve(summary, folder)
    parts = [
        "<h1>defectkit learning curve</h1>",
        "<p>Each run trained on at most k images of each class (the same test images for "
        "all; for one seed the smaller subsets are part of the larger ones), several seeds "
        "per k. Where the curve still climbs at the largest k, more images will help; where "
        "it is flat, they will not. A class with fewer training images than k used all it "
        "had (its points sit at its own count in the per-class plot).</p>",
        table(
            rows,
            ["k", "runs", "accuracy", "balanced accuracy", "macro F1", "seconds per run"],
        ),
        embed(accuracy),
        "<h2>Per class: recall against the class's training images</h2>",
        embed(per_class),
        "<h2>Runs</h2><ul>"
        + "".join(
            f'<li><a href="{html.escape(Path(r["run"]).name)}/report.html">'
            f"{html.escape(r['name'])}</a>: accuracy {r['accuracy']:.4f}</li>"
            for r in summary["runs"]
        )
        + "</ul>",
    ]
    path = folder / "report.html"
    path.write_text(html_page("learning curve", parts))
    return path
