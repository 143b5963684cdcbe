"""Run a fitted model over a split and turn its predictions into metrics and a CSV."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from defectkit.config import RunConfig
from defectkit.data.samples import ok_class
from defectkit.data.tensors import ImageDataset
from defectkit.data.transforms import VIEWS
from defectkit.engine.train import predict_logits
from defectkit.metrics import (
    binary_metrics,
    choose_threshold,
    classification_metrics,
    uncertainty,
)
from defectkit.models.classifier import class_probabilities
from defectkit.predictions import Prediction, PredictionWriter, decide_class


def predict_probabilities(
    model: nn.Module, loader: DataLoader, device: torch.device, views: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(class probabilities, targets) of every sample in loader order, as the bundle's graph
    computes them (the mean over `views` flips / turns: eval.tta)."""
    return predict_logits(model, loader, device, lambda m, x: class_probabilities(m, x, views))


def positive_class(classes: Sequence[str], requested: str = "") -> str | None:
    """The NG class of a two-class problem: the one asked for, else "ng" when present."""
    if requested:
        if requested not in classes:
            raise ValueError(
                f"eval.positive={requested!r} is not a class; classes: {list(classes)}"
            )
        return requested
    lowered = [c.lower() for c in classes]
    for name in ("ng", "defect", "bad", "nok"):
        if name in lowered:
            return classes[lowered.index(name)]
    return None


def evaluate_classifier(
    model: nn.Module,
    test_set: ImageDataset,
    device: torch.device,
    config: RunConfig,
    run_dir: Path,
    val_set: ImageDataset | None = None,
) -> dict[str, Any]:
    """Metrics on the test split, plus predictions.csv and the worst mistakes for the report.
    An OK/NG threshold is chosen on the validation images when there are any (so the test
    numbers at that threshold are honest), else on the test images, and says which."""
    classes = list(test_set.index)
    loader = DataLoader(test_set, batch_size=32, num_workers=config.data.num_workers)
    if test_set.cache is not None:
        for i in range(len(test_set)):  # decode first, so the timed pass measures the model
            test_set.raw(i)
    views = VIEWS[config.eval.tta]  # test-time augmentation, as the bundle's graph does
    tick = time.perf_counter()
    probabilities, targets = predict_probabilities(model, loader, device, views)
    seconds = time.perf_counter() - tick
    probs = probabilities.numpy()
    targets_np = targets.numpy()
    argmax = probs.argmax(1)
    result: dict[str, Any] = {
        "tta": config.eval.tta,
        "split_size": len(test_set),
        "images_per_second": len(test_set) / seconds if seconds else 0.0,
    }
    positive = positive_class(classes, config.eval.positive)
    threshold = None
    if positive is not None and len(classes) == 2:
        k = classes.index(positive)
        rule, target = config.eval.threshold_rule, config.eval.target
        chosen_on = "test"
        if val_set is not None and len({s.label for s in val_set.samples}) == 2:
            val_probs, val_targets = predict_probabilities(
                model, DataLoader(val_set, 32), device, views
            )
            val_scores = val_probs[:, k].numpy()
            threshold = choose_threshold(val_targets.numpy() == k, val_scores, rule, target)
            chosen_on = "validation"
        result["positive"] = positive
        result["binary"] = binary_metrics(targets_np == k, probs[:, k], rule, target, threshold)
        result["binary"]["threshold_chosen_on"] = chosen_on
        threshold = result["binary"]["threshold"]
    # every headline number is what the bundle decides: at its threshold for OK/NG models
    decisions = [
        decide_class(
            str(s.image), row, classes, positive if threshold is not None else None, threshold
        )
        for s, row in zip(test_set.samples, probs, strict=True)
    ]
    predicted = np.array([classes.index(d.label) for d in decisions])
    result.update(classification_metrics(targets_np, predicted, classes))
    if threshold is not None:
        result["decided_by"] = f"{positive} probability >= {threshold:.4g} (the bundle's threshold)"
        result["at_0.5"] = classification_metrics(targets_np, argmax, classes)
    else:
        result["decided_by"] = "the likeliest class"
    if views > 1:
        result["decided_by"] += (
            f"; each probability the mean over {views} views of the image (eval.tta="
            f"{config.eval.tta})"
        )
    result.update(classify_uncertainty(targets_np, predicted, probs, classes, positive, threshold))
    with PredictionWriter(run_dir / "predictions.csv", classes, extra=["truth"]) as writer:
        for sample, decision in zip(test_set.samples, decisions, strict=True):
            writer.write(decision, truth=sample.label)
    result["worst_mistakes"] = worst_mistakes(
        test_set, probs, targets_np, predicted, config.eval.worst_k
    )
    return result


def classify_uncertainty(
    targets: np.ndarray,
    predicted: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    positive: str | None,
    threshold: float | None,
) -> dict[str, Any]:
    """Bootstrap intervals of accuracy, balanced accuracy, macro F1 and, for an OK/NG model,
    ROC AUC and NG recall / OK specificity at the bundle's threshold."""
    from sklearn.metrics import roc_auc_score

    k = classes.index(positive) if positive is not None and threshold is not None else None
    good = ok_class(classes)
    if k is not None:
        ng_images = int((targets == k).sum())
    elif good is not None:
        ng_images = int((targets != classes.index(good)).sum())
    else:  # defect types only: no OK / NG
        ng_images = len(targets)

    def statistic(i: np.ndarray) -> dict[str, float | None]:
        m = classification_metrics(targets[i], predicted[i], classes)
        out = {key: m[key] for key in ("accuracy", "balanced_accuracy", "macro_f1")}
        if k is not None:
            is_ng, score = targets[i] == k, probs[i, k]
            if is_ng.any() and not is_ng.all():
                called = score >= threshold
                out["binary.auc"] = float(roc_auc_score(is_ng, score))
                out["binary.ng_recall"] = float(called[is_ng].mean())
                out["binary.ok_specificity"] = float((~called[~is_ng]).mean())
        return out

    return uncertainty(statistic, len(targets), ng_images)


def worst_mistakes(
    dataset: ImageDataset, probs: np.ndarray, targets: np.ndarray, predicted: np.ndarray, k: int
) -> list[dict[str, Any]]:
    """Wrong decisions, the most confident first: what an engineer should look at."""
    classes = list(dataset.index)
    wrong = np.nonzero(predicted != targets)[0]
    order = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:k]
    return [
        {
            "image": str(dataset.samples[i].image),
            "label": classes[targets[i]],
            "predicted": classes[predicted[i]],
            "confidence": float(probs[i, predicted[i]]),
        }
        for i in order
    ]


def evaluate_bundle(inspector, samples: Sequence[Any], data: str) -> dict[str, Any]:
    """Accuracy, per-class metrics and (OK/NG models) ROC AUC and the rates at the bundle's
    threshold, from the Inspector's own decisions."""
    unknown = sorted({s.label for s in samples} - set(inspector.classes))
    if unknown:
        raise ValueError(
            f"{data} has labels {unknown} the model does not know "
            f"({inspector.classes}); is it the right dataset?"
        )
    predictions: list[Prediction] = list(inspector.predict([s.image for s in samples]))
    index = {c: i for i, c in enumerate(inspector.classes)}
    targets = np.array([index[s.label] for s in samples])
    predicted = np.array([index[p.label] for p in predictions])
    result: dict[str, Any] = {
        "images": len(samples),
        **classification_metrics(targets, predicted, inspector.classes),
    }
    if inspector.positive is not None:
        k = index[inspector.positive]
        scores = np.array([p.scores[inspector.positive] for p in predictions])
        binary = binary_metrics(targets == k, scores, threshold=inspector.threshold)
        result["binary"] = {key: v for key, v in binary.items() if key not in ("roc", "pr")}
    return result
