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
from PIL import Image

from defectkit.config import TASK_SECTIONS, RunConfig, config_to_dict
from defectkit.data.images import load_image
from defectkit.metrics import binary_metrics


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_learning_curves(history: list[dict], path: Path) -> Path:
    """Losses on the left; accuracies and IoUs, whichever the task logs, on the right."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [h["epoch"] for h in history]
    keys = list(history[0]) if history else []
    panels = (
        (axes[0], "loss", [k for k in keys if k.endswith("_loss")]),
        (axes[1], "score", [k for k in keys if "accuracy" in k or "iou" in k]),
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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


def plot_image_grid(
    items: Sequence[tuple[Path, str]], path: Path, columns: int = 6, thumb: int = 128
) -> Path:
    """Thumbnails with a caption each (worst mistakes, samples per class)."""
    columns = max(1, min(columns, len(items)))
    rows = max(1, -(-len(items) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.1), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image_path, caption) in zip(axes.flat, items, strict=False):
        image = load_image(Path(image_path))
        image.thumbnail((thumb, thumb))
        axis.imshow(np.asarray(image))
        axis.set_title(caption, fontsize=7)
    return _save(fig, path)


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
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


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}h2{border-bottom:2px solid #eee;margin-top:1.6em}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}.big{font-size:1.4em}"""


def _write_page(run_dir: Path, config: RunConfig, parts: list[str]) -> Path:
    """report.html: the given sections, then the run's configuration."""
    used = TASK_SECTIONS.get(config.task)
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
            _table(rows, ["file", "why"]),
        ]
    parts = [*parts, "<h2>Configuration</h2>", f"<pre>{html.escape(config_text)}</pre>"]
    page = (
        f"<!doctype html><meta charset=utf-8><title>{html.escape(run_dir.name)}</title>"
        f"<style>{STYLE}</style>" + "\n".join(parts)
    )
    path = run_dir / "report.html"
    path.write_text(page)
    return path


def write_classify_report(
    run_dir: Path, config: RunConfig, summary: dict, history: list[dict], result: dict[str, Any]
) -> Path:
    """Every headline number, the per-class table and the confusion matrix are the bundle's
    own decisions (at its threshold, for OK/NG models); the plain 0.5 view follows, labelled."""
    plots = run_dir / "plots"
    classes = list(result["per_class"])
    parts = [
        f"<h1>defectkit classify: {html.escape(run_dir.name)}</h1>",
        f"<p class=big>test accuracy <b>{result['accuracy']:.4f}</b> · balanced accuracy "
        f"{result['balanced_accuracy']:.4f} · macro F1 {result['macro_f1']:.4f} · "
        f"{result['split_size']} test images</p>",
        f"<p>Decided as the shipped bundle decides: {html.escape(result['decided_by'])}. "
        "predictions.csv holds each test image's decision in the columns of "
        "<code>defectkit predict</code>, with its true label.</p>",
    ]
    counts = summary["counts"]
    parts += [
        "<h2>Data</h2>",
        f"<p>{html.escape(summary['root'])} ({html.escape(summary['layout'])} layout)</p>",
        _table([[c, *(counts[p][c] for p in counts)] for c in classes], ["class", *counts]),
    ]
    if history:
        parts += [
            "<h2>Learning curves</h2>",
            _embed(plot_learning_curves(history, plots / "learning_curves.png")),
        ]
    parts += [
        "<h2>Test metrics (the bundle's decisions)</h2>",
        _per_class_table(result),
        _embed(plot_confusion(result["confusion_matrix"], classes, plots / "confusion_matrix.png")),
    ]
    if "at_0.5" in result:
        plain = result["at_0.5"]
        parts += [
            "<h3>For comparison: the likeliest class (a 0.5 cut-off), not what the bundle "
            "does</h3>",
            f"<p>accuracy {plain['accuracy']:.4f} · balanced accuracy "
            f"{plain['balanced_accuracy']:.4f} · macro F1 {plain['macro_f1']:.4f}</p>",
            _per_class_table(plain),
        ]
    binary = result.get("binary")
    if binary and "auc" in binary:
        rows = [
            [
                name,
                p["threshold"],
                p["ng_recall"],
                p["ok_specificity"],
                p["ng_precision"],
                p["ng_f1"],
            ]
            for name, p in (
                (f"the bundle's ({binary['threshold_rule']})", binary["at_threshold"]),
                ("0.5", binary["at_0.5"]),
                ("95% OK specificity", binary["at_95_specificity"]),
            )
        ]
        parts += [
            f"<h2>OK / NG ({html.escape(result['positive'])} is NG)</h2>",
            f"<p>ROC AUC {binary['auc']:.4f} · average precision "
            f"{binary['average_precision']:.4f} · the bundle's threshold "
            f"{binary['threshold']:.4f}, chosen on the {binary['threshold_chosen_on']} images "
            f"by the {binary['threshold_rule']} rule</p>",
            _table(
                rows,
                [
                    "operating point",
                    "threshold",
                    "NG recall",
                    "OK specificity",
                    "NG precision",
                    "NG F1",
                ],
            ),
            _embed(plot_roc_pr(binary, plots / "roc_pr.png")),
        ]
    mistakes = result.get("worst_mistakes", [])
    parts.append("<h2>Worst mistakes (the bundle's decisions, most confident first)</h2>")
    if mistakes:
        items = [
            (
                Path(m["image"]),
                f"{Path(m['image']).name}\n{m['label']} → {m['predicted']} {m['confidence']:.2f}",
            )
            for m in mistakes
        ]
        parts.append(_embed(plot_image_grid(items, plots / "worst_mistakes.png")))
    else:
        parts.append("<p>none: every test image was classified correctly.</p>")
    timing = [
        ["training wall time", seconds_text(result.get("train_seconds", 0.0))],
        ["whole run", seconds_text(result.get("total_seconds", 0.0))],
        ["inference", f"{result.get('images_per_second', 0.0):,.0f} images/s"],
        ["peak memory (RSS)", megabytes_text(result.get("peak_rss_mb", 0.0))],
        ["device", result.get("device", "")],
        ["epochs", result.get("epochs_run", 0)],
    ]
    parts += [
        "<h2>Timing and memory</h2>",
        _table(timing, ["what", "value"]),
        f"<p>{html.escape(weights_text(result.get('weights', {})))}</p>",
    ]
    return _write_page(run_dir, config, parts)


def _per_class_table(metrics: dict[str, Any]) -> str:
    return _table(
        [
            [c, m["precision"], m["recall"], m["f1"], m["support"]]
            for c, m in metrics["per_class"].items()
        ],
        ["class", "precision", "recall", "F1", "support"],
    )


# ---------------------------------------------------------------- anomaly runs
def plot_score_histogram(
    scores: np.ndarray, is_bad: np.ndarray, threshold: float, path: Path
) -> Path:
    fig, axis = plt.subplots(figsize=(7, 3.6))
    bins = np.linspace(scores.min(), scores.max(), 40)
    axis.hist(scores[~is_bad], bins=bins, alpha=0.6, label="defect-free")
    axis.hist(scores[is_bad], bins=bins, alpha=0.6, label="defective")
    axis.axvline(
        threshold, color="k", linestyle="--", label=f"calibrated threshold {threshold:.3f}"
    )
    axis.set_xlabel("image anomaly score")
    axis.set_ylabel("images")
    axis.legend()
    return _save(fig, path)


def plot_heatmaps(
    items: list[tuple[Path, np.ndarray, np.ndarray | None, str]], path: Path, vmax: float
) -> Path:
    """Image with its anomaly map over it and the true defect outline, one per column."""
    fig, axes = _image_row(len(items))
    for axis, (image_path, amap, mask, caption) in zip(axes, items, strict=False):
        image = np.asarray(load_image(image_path).convert("L").resize(amap.shape[::-1]))
        axis.imshow(image, cmap="gray")
        axis.imshow(amap, cmap="jet", alpha=0.45, vmin=0, vmax=vmax)
        _outline(axis, mask, caption)
    return _save(fig, path)


def _image_row(count: int) -> tuple[plt.Figure, list]:
    """A row of `count` image panels without axes."""
    fig, axes = plt.subplots(1, max(1, count), figsize=(2.3 * max(1, count), 2.6), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    return fig, list(axes.flat)


def _outline(axis, truth: np.ndarray | None, caption: str) -> None:
    """The true defect outlined in white, and the panel's caption."""
    if truth is not None and truth.any():
        axis.contour(truth, levels=[0.5], colors="white", linewidths=0.8)
    axis.set_title(caption, fontsize=7)


def write_anomaly_report(
    run_dir: Path,
    config: RunConfig,
    samples: Sequence[Any],
    good: str,
    scores: np.ndarray,
    maps: Sequence[Any],
    result: dict[str, Any],
) -> Path:
    from PIL import Image

    plots = run_dir / "plots"
    is_bad = np.array([s.label != good for s in samples])
    threshold = result["threshold"]
    vmax = float(np.quantile(scores, 0.99))

    def heat_items(indices: Sequence[int]) -> list:
        items = []
        for i in indices:
            amap = maps[i].numpy()
            mask = None
            if samples[i].mask is not None:
                with Image.open(samples[i].mask) as raw:
                    mask = np.asarray(raw.convert("L").resize(amap.shape[::-1])) > 127
            items.append((samples[i].image, amap, mask, f"{samples[i].label} {scores[i]:.2f}"))
        return items

    roc = {**binary_metrics(is_bad, scores, threshold=threshold), "threshold_rule": "calibrated"}
    order = np.argsort(-scores)
    caught = [i for i in order if is_bad[i]][:6]
    missed = [i for i in order[::-1] if is_bad[i]][:6]
    false_alarms = [i for i in order if not is_bad[i]][:6]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    headline = (
        f"image AUROC <b>{result['image_auroc']:.4f}</b> · pixel AUROC "
        f"{fmt(result['pixel_auroc'])} · AUPRO(30% FPR) {fmt(result['aupro'])} · "
        f"F1-max {result['f1_max']:.4f} · F1 at the calibrated threshold "
        f"{result['f1_calibrated']:.4f}"
    )
    rates = [
        [
            name,
            v["images"],
            v["flagged"],
            fmt(v.get("pixel_auroc")),
            fmt(v.get("pixel_auroc_within")),
            fmt(v.get("image_pixel_auroc_median")),
            v.get("images_map_inverted", "n/a"),
            fmt(v.get("pixel_auroc_without")),
        ]
        for name, v in result["per_class"].items()
    ]
    timing = [
        ["fit", seconds_text(result["fit_seconds"])],
        ["inference", f"{result['ms_per_image']:.1f} ms per image"],
        ["peak memory (RSS)", megabytes_text(result["peak_rss_mb"])],
        ["model state (memory bank, Gaussians)", megabytes_text(result["model_mb"])],
        ["device", result["device"]],
    ]
    parts = [
        f"<h1>defectkit anomaly: {html.escape(run_dir.name)}</h1>",
        f"<p class=big>{headline}</p>",
        f"<p>fit: {html.escape(fit_text(result['fit']))}; threshold {threshold:.4f} calibrated on "
        f"{result['calibration_images']} held-out defect-free images for a "
        f"{100 * result['false_alarm_rate_target']:.1f}% false-alarm rate</p>",
        "<h2>Scores</h2>",
        _embed(plot_score_histogram(scores, is_bad, threshold, plots / "score_histogram.png")),
        "<h2>Image-level ROC and PR</h2>",
        _embed(plot_roc_pr(roc, plots / "roc_pr.png")),
        "<h2>Per class: share flagged at the calibrated threshold, pixel AUROC</h2>",
        _table(
            rates,
            [
                "class",
                "images",
                "flagged",
                "pixel AUROC (with the good images)",
                "pixel AUROC (inside its own images)",
                "median per image",
                "images with the map inverted",
                "pooled pixel AUROC without the class",
            ],
        ),
        "<h2>Defects caught with the highest scores</h2>",
        _embed(plot_heatmaps(heat_items(caught), plots / "heat_caught.png", vmax)),
        "<h2>Defects with the lowest scores (hardest)</h2>",
        _embed(plot_heatmaps(heat_items(missed), plots / "heat_missed.png", vmax)),
        "<h2>Defect-free images with the highest scores (false alarms first)</h2>",
        _embed(plot_heatmaps(heat_items(false_alarms), plots / "heat_false_alarms.png", vmax)),
        "<h2>Timing and memory</h2>",
        _table(timing, ["what", "value"]),
    ]
    return _write_page(run_dir, config, parts)


def overlay(image: Image.Image, heat_map: np.ndarray, max_side: int = 0) -> Image.Image:
    """The normalised heat map (0.5 = threshold) over the image, both at the map's size: jet
    colours fading in from 0.3 and fully on (60%) from 0.6, so that defect-free areas keep
    showing the surface. Shrunk to `max_side` when given."""
    image = image.convert("RGB").resize(heat_map.shape[::-1])
    colours = plt.get_cmap("jet")(np.clip(heat_map, 0, 1))[..., :3]
    alpha = 0.6 * np.clip((heat_map - 0.3) / 0.3, 0, 1)[..., None]
    blended = (1 - alpha) * np.asarray(image, dtype=np.float32) + alpha * colours * 255
    out = Image.fromarray(blended.round().astype(np.uint8))
    if max_side and max(out.size) > max_side:
        out.thumbnail((max_side, max_side))
    return out


def save_overlay(image_path: Path, heat_map: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay(load_image(image_path), heat_map).save(path)
    return path


def plot_mask_pairs(items: list[tuple[Path, np.ndarray, np.ndarray, str]], path: Path) -> Path:
    """Image with the true defect outlined in white and the prediction filled red."""
    fig, axes = _image_row(len(items))
    for axis, (image_path, truth, predicted, caption) in zip(axes, items, strict=False):
        axis.imshow(np.asarray(load_image(image_path).convert("L")), cmap="gray")
        axis.imshow(np.ma.masked_where(~predicted, predicted), cmap="autumn", alpha=0.5)
        _outline(axis, truth, caption)
    return _save(fig, path)


def write_segment_report(
    run_dir: Path,
    config: RunConfig,
    dataset: Any,
    probabilities: Sequence[Any],
    rows: list[dict[str, Any]],
    result: dict[str, Any],
    history: list[dict],
) -> Path:
    from defectkit.tasks.segment import to_image_mask

    plots = run_dir / "plots"
    sc = config.segment

    def pairs(indices: Sequence[int]) -> list:
        items = []
        for i in indices:
            truth = dataset.mask(i)
            predicted = to_image_mask(
                probabilities[i],
                truth.shape,
                config.data.image_size,
                config.data.resize,
                sc.mask_threshold,
            )
            items.append(
                (
                    dataset.samples[i].image,
                    truth,
                    predicted,
                    f"{rows[i]['label']} IoU {rows[i]['iou']:.2f}",
                )
            )
        return items

    defects = [i for i, r in enumerate(rows) if r["true_ng"]]
    by_iou = sorted(defects, key=lambda i: -rows[i]["iou"])
    false_alarms = sorted(
        (i for i, r in enumerate(rows) if not r["true_ng"] and r["predicted_pixels"]),
        key=lambda i: -rows[i]["predicted_pixels"],
    )
    keys = [
        ("defect IoU", "defect_iou"),
        ("Dice", "dice"),
        ("mIoU {background, defect}", "miou"),
        ("NG recall (mask not empty)", "ng_recall"),
        ("OK specificity (mask empty)", "ok_specificity"),
        (f"region recall (box IoU >= {sc.region_iou})", "region_recall"),
        ("region precision", "region_precision"),
    ]
    columns = ["without_gate", *(["with_gate"] if "with_gate" in result else [])]
    table_rows = [[name, *(result[c][key] for c in columns)] for name, key in keys]
    per_label = result["without_gate"]["per_label_iou"]
    parts = [
        f"<h1>defectkit segment: {html.escape(run_dir.name)}</h1>",
        f"<p class=big>defect IoU <b>{result['defect_iou']:.4f}</b> · mIoU {result['miou']:.4f}"
        f" · Dice {result['dice']:.4f} · {result['test_images']} test images"
        + (" (with the OK/NG gate)" if "with_gate" in result else "")
        + "</p>",
        "<h2>Masks with and without the gate</h2>",
        _table(table_rows, ["metric", *(c.replace("_", " ") for c in columns)]),
    ]
    if "gate" in result:
        gate = result["gate"]
        parts.append(
            f"<p>gate: NG probability >= {gate['threshold']:.3f} (chosen on validation "
            f"images) calls NG; NG recall {_cell(gate['ng_recall'])}, OK specificity "
            f"{_cell(gate['ok_specificity'])}</p>"
        )
    parts += [
        "<h2>Defect IoU per image label</h2>",
        _table([[k, v] for k, v in per_label.items()], ["label", "defect IoU"]),
    ]
    if history:
        parts += [
            "<h2>Learning curves</h2>",
            _embed(plot_learning_curves(history, plots / "learning_curves.png")),
        ]
    parts += [
        "<h2>Best segmented defects (true outline white, prediction red)</h2>",
        _embed(plot_mask_pairs(pairs(by_iou[:6]), plots / "masks_best.png")),
        "<h2>Worst segmented defects</h2>",
        _embed(plot_mask_pairs(pairs(by_iou[::-1][:6]), plots / "masks_worst.png")),
    ]
    if false_alarms:
        parts += [
            "<h2>Defect-free images with a predicted mask (before the gate)</h2>",
            _embed(plot_mask_pairs(pairs(false_alarms[:6]), plots / "masks_false_alarms.png")),
        ]
    timing = [
        ["training", seconds_text(result["train_seconds"])],
        ["inference (batch 16)", f"{result['ms_per_image']:.1f} ms per image"],
        ["peak memory (RSS)", megabytes_text(result["peak_rss_mb"])],
        ["model", megabytes_text(result["model_mb"])],
        ["device", result["device"]],
        ["epochs", result.get("epochs_run", 0)],
    ]
    parts += [
        "<h2>Timing and memory</h2>",
        _table(timing, ["what", "value"]),
        f"<p>{html.escape(weights_text(result.get('weights', {})))}</p>",
    ]
    return _write_page(run_dir, config, parts)
