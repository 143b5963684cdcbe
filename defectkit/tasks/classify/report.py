"""The classify run's report.html: its sections over the shared page of report.py."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from defectkit.config import RunConfig
from defectkit.report import (
    embed,
    megabytes_text,
    plot_confusion,
    plot_image_grid,
    plot_learning_curves,
    plot_roc_pr,
    seconds_text,
    table,
    timing_section,
    uncertainty_note,
    with_interval,
    write_page,
)
from defectkit.tasks.classify import deploy


def write_classify_report(
    run_dir: Path, config: RunConfig, summary: dict, history: list[dict], result: dict[str, Any]
) -> Path:
    """Every headline number, the per-class table and the confusion matrix are the bundle's
    own decisions (at its threshold, for OK/NG models); the plain 0.5 view follows, labelled."""
    plots = run_dir / "plots"
    classes = list(result["per_class"])
    parts = [
        f"<h1>defectkit classify: {html.escape(run_dir.name)}</h1>",
        f"<p class=big>test accuracy <b>{with_interval(result, 'accuracy')}</b> · balanced "
        f"accuracy {with_interval(result, 'balanced_accuracy')} · macro F1 "
        f"{with_interval(result, 'macro_f1')} · {result['split_size']} test images</p>",
        *uncertainty_note(result),
        f"<p>Decided as the shipped bundle decides: {html.escape(result['decided_by'])}. "
        "predictions.csv holds each test image's decision in the columns of "
        "<code>defectkit predict</code>, with its true label.</p>",
    ]
    counts = summary["counts"]
    parts += [
        "<h2>Data</h2>",
        f"<p>{html.escape(summary['root'])} ({html.escape(summary['layout'])} layout)</p>",
        table([[c, *(counts[p][c] for p in counts)] for c in classes], ["class", *counts]),
    ]
    if history:
        parts += [
            "<h2>Learning curves</h2>",
            embed(plot_learning_curves(history, plots / "learning_curves.png")),
        ]
    parts += [
        "<h2>Test metrics (the bundle's decisions)</h2>",
        _per_class_table(result),
        embed(plot_confusion(result["confusion_matrix"], classes, plots / "confusion_matrix.png")),
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
            table(
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
            embed(plot_roc_pr(binary, plots / "roc_pr.png")),
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
        parts.append(embed(plot_image_grid(items, plots / "worst_mistakes.png")))
    else:
        parts.append("<p>none: every test image was classified correctly.</p>")
    timing = [
        ["training wall time", seconds_text(result.get("train_seconds", 0.0))],
        ["whole run", seconds_text(result.get("total_seconds", 0.0))],
        ["inference", f"{result.get('images_per_second', 0.0):,.0f} images/s"],
        ["peak memory (RSS)", megabytes_text(result.get("peak_rss_mb", 0.0))],
    ]
    parts += timing_section(timing, result)
    return write_page(run_dir, config, parts, deploy.SECTIONS)


def _per_class_table(metrics: dict[str, Any]) -> str:
    return table(
        [
            [c, m["precision"], m["recall"], m["f1"], m["support"]]
            for c, m in metrics["per_class"].items()
        ],
        ["class", "precision", "recall", "F1", "support"],
    )


# ---------------------------------------------------------------- anomaly runs
