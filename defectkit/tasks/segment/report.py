"""The segment run's report.html: its sections over the shared page of report.py."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectkit.config import RunConfig
from defectkit.data.images import load_image
from defectkit.data.transforms import to_image_mask
from defectkit.report import (
    cell,
    embed,
    image_row,
    megabytes_text,
    outline,
    plot_learning_curves,
    save_figure,
    seconds_text,
    table,
    timing_section,
    uncertainty_note,
    with_interval,
    write_page,
)
from defectkit.tasks.segment import deploy


def plot_mask_pairs(items: list[tuple[Path, np.ndarray, np.ndarray, str]], path: Path) -> Path:
    """Image with the true defect outlined in white and the prediction filled red."""
    fig, axes = image_row(len(items))
    for axis, (image_path, truth, predicted, caption) in zip(axes, items, strict=False):
        axis.imshow(np.asarray(load_image(image_path).convert("L")), cmap="gray")
        axis.imshow(np.ma.masked_where(~predicted, predicted), cmap="autumn", alpha=0.5)
        outline(axis, truth, caption)
    return save_figure(fig, path)


def write_segment_report(
    run_dir: Path,
    config: RunConfig,
    dataset: Any,
    probabilities: Sequence[Any],
    rows: list[dict[str, Any]],
    result: dict[str, Any],
    history: list[dict],
) -> Path:
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
        f"<p class=big>defect IoU <b>{with_interval(result, 'defect_iou')}</b> · mIoU "
        f"{with_interval(result, 'miou')} · Dice {with_interval(result, 'dice')} · "
        f"{result['test_images']} test images"
        + (" (with the OK/NG gate)" if "with_gate" in result else "")
        + "</p>",
        *uncertainty_note(result),
        "<h2>Masks with and without the gate</h2>",
        table(table_rows, ["metric", *(c.replace("_", " ") for c in columns)]),
    ]
    if "gate" in result:
        gate = result["gate"]
        parts.append(
            f"<p>gate: NG probability >= {gate['threshold']:.3f} (chosen on validation "
            f"images) calls NG; NG recall {cell(gate['ng_recall'])}, OK specificity "
            f"{cell(gate['ok_specificity'])}</p>"
        )
    parts += [
        "<h2>Defect IoU per image label</h2>",
        table([[k, v] for k, v in per_label.items()], ["label", "defect IoU"]),
    ]
    if history:
        parts += [
            "<h2>Learning curves</h2>",
            embed(plot_learning_curves(history, plots / "learning_curves.png")),
        ]
    parts += [
        "<h2>Best segmented defects (true outline white, prediction red)</h2>",
        embed(plot_mask_pairs(pairs(by_iou[:6]), plots / "masks_best.png")),
        "<h2>Worst segmented defects</h2>",
        embed(plot_mask_pairs(pairs(by_iou[::-1][:6]), plots / "masks_worst.png")),
    ]
    if false_alarms:
        parts += [
            "<h2>Defect-free images with a predicted mask (before the gate)</h2>",
            embed(plot_mask_pairs(pairs(false_alarms[:6]), plots / "masks_false_alarms.png")),
        ]
    timing = [
        ["training", seconds_text(result["train_seconds"])],
        ["inference (batch 16)", f"{result['ms_per_image']:.1f} ms per image"],
        ["peak memory (RSS)", megabytes_text(result["peak_rss_mb"])],
        ["model", megabytes_text(result["model_mb"])],
    ]
    parts += timing_section(timing, result)
    return write_page(run_dir, config, parts, deploy.SECTIONS)
