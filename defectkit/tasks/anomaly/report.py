"""The anomaly run's report.html: its sections over the shared page of report.py."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from defectkit.config import RunConfig
from defectkit.data.images import load_image
from defectkit.metrics import binary_metrics
from defectkit.report import (
    embed,
    fit_text,
    image_row,
    megabytes_text,
    outline,
    plot_roc_pr,
    plt,
    save_figure,
    seconds_text,
    table,
    timing_section,
    uncertainty_note,
    with_interval,
    write_page,
)
from defectkit.tasks.anomaly import deploy


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
    return save_figure(fig, path)


def plot_heatmaps(
    items: list[tuple[Path, np.ndarray, np.ndarray | None, str]], path: Path, vmax: float
) -> Path:
    """Image with its anomaly map over it and the true defect outline, one per column."""
    fig, axes = image_row(len(items))
    for axis, (image_path, amap, mask, caption) in zip(axes, items, strict=False):
        image = np.asarray(load_image(image_path).convert("L").resize(amap.shape[::-1]))
        axis.imshow(image, cmap="gray")
        axis.imshow(amap, cmap="jet", alpha=0.45, vmin=0, vmax=vmax)
        outline(axis, mask, caption)
    return save_figure(fig, path)


def write_anomaly_report(
    run_dir: Path,
    config: RunConfig,
    samples: Sequence[Any],
    good: str,
    scores: np.ndarray,
    maps: Sequence[Any],
    result: dict[str, Any],
) -> Path:

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
        f"image AUROC <b>{with_interval(result, 'image_auroc')}</b> · pixel AUROC "
        f"{fmt(result['pixel_auroc'])} · AUPRO(30% FPR) {fmt(result['aupro'])} · "
        f"F1-max {result['f1_max']:.4f} · F1 at the calibrated threshold "
        f"{with_interval(result, 'f1_calibrated')}"
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
    ]
    parts = [
        f"<h1>defectkit anomaly: {html.escape(run_dir.name)}</h1>",
        f"<p class=big>{headline}</p>",
        *uncertainty_note(result),
        f"<p>fit: {html.escape(fit_text(result['fit']))}; threshold {threshold:.4f} calibrated on "
        f"{result['calibration_images']} held-out defect-free images for a "
        f"{100 * result['false_alarm_rate_target']:.1f}% false-alarm rate</p>",
        "<h2>Scores</h2>",
        embed(plot_score_histogram(scores, is_bad, threshold, plots / "score_histogram.png")),
        "<h2>Image-level ROC and PR</h2>",
        embed(plot_roc_pr(roc, plots / "roc_pr.png")),
        "<h2>Per class: share flagged at the calibrated threshold, pixel AUROC</h2>",
        table(
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
        embed(plot_heatmaps(heat_items(caught), plots / "heat_caught.png", vmax)),
        "<h2>Defects with the lowest scores (hardest)</h2>",
        embed(plot_heatmaps(heat_items(missed), plots / "heat_missed.png", vmax)),
        "<h2>Defect-free images with the highest scores (false alarms first)</h2>",
        embed(plot_heatmaps(heat_items(false_alarms), plots / "heat_false_alarms.png", vmax)),
        *timing_section(timing, result),
    ]
    return write_page(run_dir, config, parts, deploy.SECTIONS)
