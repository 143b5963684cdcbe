"""The detect run's report.html: mAP and AP per class, precision-recall curves, the OK/NG
call, and the test images where the bundle missed the most true boxes or called the most
false ones, drawn with true boxes (green) and called boxes (red, with class and score)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectkit.config import RunConfig
from defectkit.data.images import load_image
from defectkit.data.samples import Sample
from defectkit.predictions import Prediction
from defectkit.report import (
    cell,
    embed,
    image_row,
    megabytes_text,
    plot_learning_curves,
    plt,
    save_figure,
    seconds_text,
    table,
    timing_section,
    uncertainty_note,
    value_text,
    write_page,
)
from defectkit.tasks.detect import deploy
from defectkit.tasks.detect.evaluate import match_boxes


def plot_pr_curves(
    curves: dict[str, list[float]], points: dict[str, dict[str, float | None]], path: Path
) -> Path:
    """COCO's precision-recall curve of each class at IoU 0.5, with the point the bundle's
    box threshold gives on the test boxes (a dot in the class's colour)."""
    fig, axis = plt.subplots(figsize=(5.5, 4))
    recall = np.linspace(0, 1, 101)
    for name, precision in curves.items():
        (line,) = axis.plot(recall, precision, label=f"{name} (AP {np.mean(precision):.3f})")
        point = points.get(name, {})
        if point.get("precision") is not None and point.get("recall") is not None:
            axis.plot(point["recall"], point["precision"], "o", color=line.get_color(), ms=6)
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_title("precision-recall at IoU 0.5 (dots: the bundle's box thresholds)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(fig, path)


def plot_boxes(items: list[tuple[Sample, Prediction, str]], path: Path) -> Path:
    """Each image with its true boxes (green) and the boxes the bundle calls (red)."""
    from matplotlib.patches import Rectangle

    fig, axes = image_row(len(items))
    for axis, (sample, prediction, caption) in zip(axes, items, strict=False):
        axis.imshow(np.asarray(load_image(sample.image).convert("L")), cmap="gray")
        for box in sample.boxes:
            axis.add_patch(
                Rectangle(
                    (box.x1, box.y1),
                    box.x2 - box.x1,
                    box.y2 - box.y1,
                    fill=False,
                    ec="lime",
                    lw=1.5,
                )
            )
        for region in prediction.regions:
            axis.add_patch(
                Rectangle((region.x, region.y), region.width, region.height, fill=False, ec="red")
            )
            axis.text(
                region.x, region.y, f"{region.label} {region.peak:.2f}", color="red", fontsize=6
            )
        axis.set_title(caption, fontsize=8)
        axis.axis("off")
    return save_figure(fig, path)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else cell(value)


def write_detect_report(
    run_dir: Path,
    config: RunConfig,
    samples: Sequence[Sample],
    predictions: Sequence[Prediction],
    result: dict[str, Any],
    history: list[dict],
) -> Path:
    plots = run_dir / "plots"
    missed, false = [], []
    for sample, prediction in zip(samples, predictions, strict=True):
        truth = np.array([[b.x1, b.y1, b.x2, b.y2] for b in sample.boxes]).reshape(-1, 4)
        found, right = match_boxes(
            torch.as_tensor(truth, dtype=torch.float32),
            [b.label for b in sample.boxes],
            prediction.regions,
            result["match_iou"],
        )
        missed.append(len(sample.boxes) - found)
        false.append(len(prediction.regions) - right)
    worst_missed = [i for i in np.argsort(missed, kind="stable")[::-1][:6] if missed[i]]
    worst_false = [i for i in np.argsort(false, kind="stable")[::-1][:6] if false[i]]
    thresholds = result.get("box_thresholds", {})
    val_points, test_points = result.get("val_box_points", {}), result.get("box_points", {})
    per_class = [
        [
            name,
            _cell(ap),
            _cell(thresholds.get(name)),
            _cell(val_points.get(name, {}).get("precision")),
            _cell(val_points.get(name, {}).get("recall")),
            _cell(test_points.get(name, {}).get("precision")),
            _cell(test_points.get(name, {}).get("recall")),
        ]
        for name, ap in result["ap_50"].items()
    ]
    called = [
        ["box recall (true boxes found by a called box)", value_text(result, "box_recall")],
        ["box precision (called boxes on a true box)", value_text(result, "box_precision")],
        ["NG recall (images with a true box called NG)", value_text(result, "ng_recall")],
        ["OK specificity (images without one called OK)", value_text(result, "ok_specificity")],
        ["image AUROC (best box score)", value_text(result, "image_auroc")],
    ]
    parts = [
        f"<h1>defectkit detect: {html.escape(run_dir.name)}</h1>",
        f"<p class=big>mAP@0.5 <b>{result['map_50']:.4f}</b> · mAP@0.5:0.95 "
        f"{result['map']:.4f} · {result['images']} test images, {result['true_boxes']} true "
        "boxes</p>",
        *uncertainty_note(result),
        "<p>COCO evaluation (pycocotools) of every box the bundle keeps (score >= "
        f"{config.detect.score_floor}, after NMS). Each class has its own box threshold, "
        f"chosen on the validation boxes ({html.escape(str(result.get('box_rule', '')))}); "
        "the bundle shows box scores calibrated so that a class's threshold is 0.5, and "
        f"calls a box, and the image NG, at a calibrated score >= {result['threshold']:.3f} "
        f"(from {html.escape(result['threshold_from'])}); a called box finds a true one of "
        f"its class at IoU >= {result['match_iou']}.</p>",
        "<h2>AP@0.5 and the box threshold per class</h2>",
        table(
            per_class,
            [
                "class",
                "AP@0.5",
                "box threshold",
                "validation precision",
                "validation recall",
                "test precision",
                "test recall",
            ],
        ),
    ]
    if result["pr_50"]:
        parts.append(embed(plot_pr_curves(result["pr_50"], test_points, plots / "pr_curves.png")))
    parts += ["<h2>The bundle's calls</h2>", table(called, ["metric", "value"])]
    if history:
        parts += [
            "<h2>Learning curves</h2>",
            embed(plot_learning_curves(history, plots / "learning_curves.png")),
        ]
    if worst_missed:
        items = [(samples[i], predictions[i], f"missed {missed[i]}") for i in worst_missed]
        parts += [
            "<h2>Most true boxes missed (true green, called red)</h2>",
            embed(plot_boxes(items, plots / "boxes_missed.png")),
        ]
    if worst_false:
        items = [(samples[i], predictions[i], f"false {false[i]}") for i in worst_false]
        parts += [
            "<h2>Most false boxes called</h2>",
            embed(plot_boxes(items, plots / "boxes_false.png")),
        ]
    timing = [
        ["training", seconds_text(result["train_seconds"])],
        ["inference (batch 16)", f"{result['ms_per_image']:.1f} ms per image"],
        ["peak memory (RSS)", megabytes_text(result["peak_rss_mb"])],
        ["model", megabytes_text(result["model_mb"])],
    ]
    parts += timing_section(timing, result)
    return write_page(run_dir, config, parts, deploy.SECTIONS)
