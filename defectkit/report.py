"""Plots (learning curves, confusion matrix, ROC / PR, mistakes, sample grids) and the
self-contained report.html of a run: images are embedded, so the file can be mailed."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import yaml

from defectkit.config import RunConfig, config_to_dict
from defectkit.data.images import load_image
from defectkit.overlay import overlay


def save_figure(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_learning_curves(history: list[dict], path: Path) -> Path:
    """Losses on the left; accuracies, IoUs and mAPs, whichever the task logs, on the right."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [h["epoch"] for h in history]
    keys = list(history[0]) if history else []
    panels = (
        (axes[0], "loss", [k for k in keys if k.endswith("_loss")]),
        (axes[1], "score", [k for k in keys if any(s in k for s in ("accuracy", "iou", "map"))]),
    )
    for axis, name, series in panels:
        for key in series:
            style = "o-" if key.startswith("train") else "s-"
            axis.plot(epochs, [h[key] for h in history], style, label=key.replace("_", " "))
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        if series:
            axis.legend()
    return save_figure(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path) -> Path:
    values = np.asarray(matrix)
    size = max(4.0, 0.7 * len(classes) + 2)
    fig, axis = plt.subplots(figsize=(size, size * 0.85))
    axis.imshow(values, cmap="Blues")
    for (i, j), count in np.ndenumerate(values):
        colour = "white" if count > values.max() / 2 else "black"
        axis.text(j, i, str(count), ha="center", va="center", color=colour)
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    return save_figure(fig, path)


def plot_roc_pr(binary: dict[str, Any], path: Path) -> Path:
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4))
    roc.plot(binary["roc"]["fpr"], binary["roc"]["tpr"], label=f"AUC {binary['auc']:.4f}")
    roc.plot([0, 1], [0, 1], "k--", alpha=0.4)
    point = binary["at_threshold"]
    roc.plot(
        1 - point["ok_specificity"],
        point["ng_recall"],
        "ro",
        label=f"{binary['threshold_rule']} threshold {binary['threshold']:.3f}",
    )
    roc.set_xlabel("false alarm rate (1 - OK specificity)")
    roc.set_ylabel("NG recall")
    pr.plot(
        binary["pr"]["recall"],
        binary["pr"]["precision"],
        label=f"AP {binary['average_precision']:.4f}",
    )
    pr.set_xlabel("NG recall")
    pr.set_ylabel("NG precision")
    for axis in (roc, pr):
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right" if axis is roc else "lower left")
    return save_figure(fig, path)


def plot_image_grid(
    items: Sequence[tuple[Path, str]],
    path: Path,
    columns: int = 6,
    thumb: int = 128,
    boxes: Sequence[Sequence[Any]] | None = None,
) -> Path:
    """Thumbnails with a caption each (worst mistakes, samples per class); `boxes`: each
    item's boxes (x1, y1, x2, y2 and label, in the image's pixels) drawn over it."""
    from matplotlib.patches import Rectangle

    columns = max(1, min(columns, len(items)))
    rows = max(1, -(-len(items) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.1), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for n, (axis, (image_path, caption)) in enumerate(zip(axes.flat, items, strict=False)):
        image = load_image(Path(image_path))
        scale = min(1.0, thumb / max(image.size))
        image.thumbnail((thumb, thumb))
        axis.imshow(np.asarray(image))
        axis.set_title(caption, fontsize=7)
        for box in boxes[n] if boxes else ():
            corner = (box.x1 * scale, box.y1 * scale)
            width, height = (box.x2 - box.x1) * scale, (box.y2 - box.y1) * scale
            axis.add_patch(Rectangle(corner, width, height, fill=False, ec="red", lw=1))
            axis.text(*corner, box.label, color="red", fontsize=5, va="bottom")
    return save_figure(fig, path)


def embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def seconds_text(value: float) -> str:
    """110.89 -> "1 min 51 s"; 4.2 -> "4.2 s"."""
    if value >= 60:
        minutes, rest = divmod(round(value), 60)
        return f"{minutes} min {rest} s"
    return f"{value:.1f} s"


def megabytes_text(value: float) -> str:
    return f"{value:,.0f} MB" if value >= 10 else f"{value:.1f} MB"


def weights_text(info: dict[str, Any]) -> str:
    """Where the weights came from, as a sentence."""
    if not info.get("pretrained"):
        text = "No pretrained weights: the network was trained from its random initialisation."
    else:
        digest = info.get("weights_sha256") or ""
        text = f"ImageNet weights from {info.get('weights_file', 'timm')}" + (
            f" (sha256 {digest[:16]}…)." if digest else "."
        )
    if info.get("warm_start"):
        text += f" Warm-started from {info['warm_start']}."
    return text


def fit_text(fit: dict[str, Any]) -> str:
    """An anomaly fit's facts ({"patches": 9216, "memory_bank": 92}) as a phrase."""

    def show(value: Any) -> str:
        return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"

    return ", ".join(f"{key.replace('_', ' ')} {show(value)}" for key, value in fit.items())


def with_interval(result: dict[str, Any], key: str, digits: int = 4) -> str:
    """A headline number with its 95% bootstrap interval (metrics.uncertainty), as HTML."""
    value = result
    for part in key.split("."):
        value = value[part]
    text = f"{value:.{digits}f}"
    low_high = result.get("intervals", {}).get(key)
    if low_high:
        text += f" <small>({low_high[0]:.{digits - 1}f}–{low_high[1]:.{digits - 1}f})</small>"
    return text


def value_text(result: dict[str, Any], key: str) -> str:
    """A number with its interval as plain text, for tables ("n/a" when undefined)."""
    value = result.get(key)
    if value is None:
        return "n/a"
    low_high = result.get("intervals", {}).get(key)
    return f"{value:.4f}" + (f" ({low_high[0]:.3f}-{low_high[1]:.3f})" if low_high else "")


def uncertainty_note(result: dict[str, Any]) -> list[str]:
    """What the intervals are, and a warning when the test part holds few NG images."""
    parts = []
    if "few_ng_warning" in result:
        parts.append(
            '<p style="color:#a33;font-weight:600">Few NG test images: '
            f"{html.escape(result['few_ng_warning'])}.</p>"
        )
    if result.get("intervals"):
        parts.append(
            f"<p><small>In brackets: {html.escape(result['interval_method'])}; "
            "another split of the same data could give any value in them.</small></p>"
        )
    return parts


def timing_section(rows: list[list[Any]], result: dict[str, Any]) -> list[str]:
    """The report's closing "Timing and memory" table (the task's rows, then the device and
    epochs) and, for a trained network, where its weights came from."""
    rows = [*rows, ["device", result.get("device", "")]]
    if "epochs_run" in result:
        rows.append(["epochs", result["epochs_run"]])
    parts = ["<h2>Timing and memory</h2>", table(rows, ["what", "value"])]
    if "weights" in result:
        parts.append(f"<p>{html.escape(weights_text(result['weights']))}</p>")
    return parts


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}h2{border-bottom:2px solid #eee;margin-top:1.6em}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}.big{font-size:1.4em}"""


def write_page(
    run_dir: Path, config: RunConfig, parts: list[str], used: Sequence[str] | None = None
) -> Path:
    """report.html: the given sections, then the run's configuration (of it, the `used`
    sections and the top-level keys)."""
    values = config_to_dict(config)
    if used is not None:  # only the sections this task reads
        values = {k: v for k, v in values.items() if not isinstance(v, dict) or k in used}
    config_text = yaml.safe_dump(values, sort_keys=False)
    left_out = run_dir / "left_out.json"
    if left_out.is_file():
        rows = [[b["file"], b["reason"]] for b in json.loads(left_out.read_text())]
        parts = [
            *parts,
            f"<h2>Left out: {len(rows)} sample(s) with a bad file</h2>",
            "<p>data.on_bad_image=skip: these samples were in the dataset folder but not in "
            "this run's training or test images.</p>",
            table(rows, ["file", "why"]),
        ]
    parts = [*parts, "<h2>Configuration</h2>", f"<pre>{html.escape(config_text)}</pre>"]
    path = run_dir / "report.html"
    path.write_text(html_page(run_dir.name, parts))
    return path


def html_page(title: str, parts: Sequence[str]) -> str:
    """A self-contained page of the given sections, in the reports' style."""
    return (
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style>" + "\n".join(parts)
    )


def image_row(count: int) -> tuple[plt.Figure, list]:
    """A row of `count` image panels without axes."""
    fig, axes = plt.subplots(1, max(1, count), figsize=(2.3 * max(1, count), 2.6), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    return fig, list(axes.flat)


def outline(axis, truth: np.ndarray | None, caption: str) -> None:
    """The true defect outlined in white, and the panel's caption."""
    if truth is not None and truth.any():
        axis.contour(truth, levels=[0.5], colors="white", linewidths=0.8)
    axis.set_title(caption, fontsize=7)


def save_overlay(image_path: Path, heat_map: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay(load_image(image_path), heat_map).save(path)
    return path
