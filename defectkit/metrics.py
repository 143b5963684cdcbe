"""Metrics the field reports: accuracy, balanced accuracy, per-class precision / recall / F1,
confusion matrix; for OK/NG, ROC + AUC, PR + AP and threshold choice. Plain functions over
numpy arrays, so tests can check them against numbers worked out by hand."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets), np.asarray(predictions)), 1)
    return matrix


def _safe_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)


def classification_metrics(
    targets: np.ndarray, predictions: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    matrix = confusion_matrix(targets, predictions, len(classes))
    tp = np.diag(matrix).astype(float)
    precision = _safe_divide(tp, matrix.sum(0).astype(float))
    recall = _safe_divide(tp, matrix.sum(1).astype(float))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    present = matrix.sum(1) > 0
    return {
        "accuracy": float(tp.sum() / max(1, matrix.sum())),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(matrix[i].sum()),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": matrix.tolist(),
    }


def choose_threshold(
    is_ng: np.ndarray, ng_score: np.ndarray, rule: str, target: float = 0.95
) -> float:
    """An NG-score threshold (score >= t means NG).

    youden: maximise recall + specificity - 1; recall: the highest threshold whose NG recall
    reaches `target`; specificity: the lowest threshold whose OK specificity reaches `target`.
    """
    is_ng = np.asarray(is_ng, dtype=bool)
    ng_score = np.asarray(ng_score, dtype=float)
    candidates = np.unique(ng_score)[::-1]  # high to low: recall rises as t falls
    recall = np.array([(ng_score[is_ng] >= t).mean() for t in candidates])
    specificity = np.array([(ng_score[~is_ng] < t).mean() for t in candidates])
    if rule == "youden":
        return float(candidates[int(np.argmax(recall + specificity - 1))])
    if rule == "recall":
        reached = np.nonzero(recall >= target)[0]
        return float(candidates[reached[0]] if len(reached) else candidates[-1])
    if rule == "specificity":
        reached = np.nonzero(specificity >= target)[0]
        return float(candidates[reached[-1]] if len(reached) else candidates[0])
    raise ValueError(f"unknown threshold rule {rule!r}; use youden, recall or specificity")


def rates_at(is_ng: np.ndarray, ng_score: np.ndarray, threshold: float) -> dict[str, float]:
    is_ng = np.asarray(is_ng, dtype=bool)
    called = np.asarray(ng_score) >= threshold
    tp, fn = int((called & is_ng).sum()), int((~called & is_ng).sum())
    fp, tn = int((called & ~is_ng).sum()), int((~called & ~is_ng).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "threshold": float(threshold),
        "ng_recall": recall,
        "ok_specificity": tn / (tn + fp) if tn + fp else 0.0,
        "ng_precision": precision,
        "ng_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "accuracy": (tp + tn) / max(1, len(called)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def binary_metrics(
    is_ng: np.ndarray,
    ng_score: np.ndarray,
    rule: str = "youden",
    target: float = 0.95,
    threshold: float | None = None,
) -> dict[str, Any]:
    """ROC/PR summaries and the operating points an engineer picks from. `threshold`, when
    given, was chosen elsewhere (on validation images) and is only applied here."""
    is_ng = np.asarray(is_ng, dtype=bool)
    if is_ng.all() or not is_ng.any():
        return {"note": "ROC needs both OK and NG images in the split"}
    fpr, tpr, _ = roc_curve(is_ng, ng_score)
    precision, recall, _ = precision_recall_curve(is_ng, ng_score)
    chosen = threshold if threshold is not None else choose_threshold(is_ng, ng_score, rule, target)
    return {
        "auc": float(roc_auc_score(is_ng, ng_score)),
        "average_precision": float(average_precision_score(is_ng, ng_score)),
        "threshold_rule": rule,
        "threshold": chosen,
        "at_threshold": rates_at(is_ng, ng_score, chosen),
        "at_0.5": rates_at(is_ng, ng_score, 0.5),
        "at_95_specificity": rates_at(
            is_ng, ng_score, choose_threshold(is_ng, ng_score, "specificity", 0.95)
        ),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
        "pr": {"precision": precision.tolist(), "recall": recall.tolist()},
    }


# ---------------------------------------------------------------- anomaly detection
def f1_max(is_anomalous: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(best F1 over all thresholds, the threshold that gives it)."""
    precision, recall, thresholds = precision_recall_curve(is_anomalous, scores)
    f1 = _safe_divide(2 * precision * recall, precision + recall)[:-1]
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def aupro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], max_fpr: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to `max_fpr`, divided by `max_fpr`
    (Bergmann et al., MVTec AD). Every connected defect region counts equally, however small.

    Exact and single-pass: sorting all pixels by score, the mean overlap over R regions at a
    threshold is cumsum(w) / R with w = 1 / |region| for a defect pixel, 0 otherwise.
    """
    from scipy import ndimage

    weights, negative, scores = [], [], []
    regions = 0
    for mask, amap in zip(masks, maps, strict=True):
        labelled, count = ndimage.label(np.asarray(mask) > 0)
        sizes = np.bincount(labelled.ravel())
        w = np.where(labelled > 0, 1.0 / sizes[labelled].clip(min=1), 0.0)
        weights.append(w.ravel())
        negative.append((labelled == 0).ravel())
        scores.append(np.asarray(amap, dtype=np.float64).ravel())
        regions += count
    if regions == 0:
        raise ValueError("AUPRO needs at least one defect region in the masks")
    w, neg, s = np.concatenate(weights), np.concatenate(negative), np.concatenate(scores)
    order = np.argsort(-s, kind="stable")
    s = s[order]
    pro = np.cumsum(w[order]) / regions
    fpr = np.cumsum(neg[order]) / max(1, neg.sum())
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # one point per distinct threshold
    fpr, pro = np.r_[0.0, fpr[last_of_tie]], np.r_[0.0, pro[last_of_tie]]
    inside = fpr <= max_fpr
    cut_pro = np.interp(max_fpr, fpr, pro)
    fpr, pro = np.r_[fpr[inside], max_fpr], np.r_[pro[inside], cut_pro]
    return float(np.trapezoid(pro, fpr) / max_fpr)


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    truth = np.concatenate([np.asarray(m).ravel() > 0 for m in masks])
    scores = np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in maps])
    return float(roc_auc_score(truth, scores))
