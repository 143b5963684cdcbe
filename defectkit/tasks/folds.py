"""k-fold cross-validation over whole runs (`defectkit train ... --folds all`): each fold's
headline numbers, their mean and standard deviation, and the pooled out-of-fold numbers of
a classifier (every image predicted once, by the model that did not see it)."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from defectkit.metrics import classification_metrics

HEADLINES = {
    "classify": ("accuracy", "balanced_accuracy", "macro_f1", "binary.auc"),
    "segment": ("defect_iou", "miou", "dice"),
    "detect": ("map_50", "map", "box_recall"),
}


def _number(result: dict[str, Any], key: str) -> float | None:
    value: Any = result
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, int | float) else None


def pooled_classify(run_dirs: list[Path]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1 (and ROC AUC of an OK/NG model) over the test
    images of every fold together, from each fold's predictions.csv."""
    from sklearn.metrics import roc_auc_score

    rows = [row for d in run_dirs for row in csv.DictReader((d / "predictions.csv").open())]
    rows = [r for r in rows if not r.get("error")]
    classes = sorted({r["truth"] for r in rows} | {r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    truth = np.array([index[r["truth"]] for r in rows])
    called = np.array([index[r["label"]] for r in rows])
    m = classification_metrics(truth, called, classes)
    out = {
        "images": len(rows),
        **{k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")},
    }
    positives = {json.loads((d / "metrics.json").read_text()).get("positive") for d in run_dirs}
    positive = positives.pop() if len(positives) == 1 else None
    if positive and f"score_{positive}" in rows[0]:
        is_ng = np.array([r["truth"] == positive for r in rows])
        if is_ng.any() and not is_ng.all():
            scores = np.array([float(r[f"score_{positive}"]) for r in rows])
            out["binary.auc"] = float(roc_auc_score(is_ng, scores))
    return out


def summarise_folds(task: str, run_dirs: list[Path], results: list[dict[str, Any]]) -> dict:
    keys = [k for k in HEADLINES.get(task, ()) if any(_number(r, k) is not None for r in results)]
    per_fold = [{k: _number(r, k) for k in keys} for r in results]
    summary: dict[str, Any] = {
        "task": task,
        "folds": len(results),
        "runs": [str(d) for d in run_dirs],
        "per_fold": per_fold,
        "mean": {},
        "std": {},
    }
    for key in keys:
        values = [f[key] for f in per_fold if f[key] is not None]
        summary["mean"][key] = float(np.mean(values))
        summary["std"][key] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    if task == "classify":
        summary["pooled"] = pooled_classify(run_dirs)
    return summary


def write_folds_report(summary: dict[str, Any], folder: Path) -> Path:
    from defectkit.report import html_page, table

    keys = list(summary["mean"])
    rows = [[f"fold {i}", *(f[k] for k in keys)] for i, f in enumerate(summary["per_fold"])]
    rows.append(["mean", *(summary["mean"][k] for k in keys)])
    rows.append(["standard deviation", *(summary["std"][k] for k in keys)])
    if "pooled" in summary:
        rows.append(["pooled out-of-fold", *(summary["pooled"].get(k, "") for k in keys)])
    parts = [
        f"<h1>defectkit {html.escape(summary['task'])}: {summary['folds']}-fold "
        "cross-validation</h1>",
        "<p>Every fold trained as its own run (the links below); each image is a test image "
        "of exactly one fold. Pooled: every test image of every fold together, each called by "
        "the model that never saw it.</p>",
        table(rows, ["", *keys]),
        "<h2>Runs</h2><ul>"
        + "".join(
            f'<li><a href="{html.escape(Path(r).name)}/report.html">{html.escape(r)}</a></li>'
            for r in summary["runs"]
        )
        + "</ul>",
    ]
    path = folder / "report.html"
    path.write_text(html_page(f"{summary['task']} k-fold", parts))
    return path
