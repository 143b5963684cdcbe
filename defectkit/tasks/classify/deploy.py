"""What the runtime asks of the classify task: its bundle's model, the inference graph's
head (class probabilities), the decision per image, `eval` on labelled images, and the
command line's summaries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from defectkit.bundle import load_weights, write_bundle
from defectkit.config import RunConfig
from defectkit.models.backbones import Preprocessing
from defectkit.models.classifier import class_probabilities
from defectkit.predictions import decide_class

OUTPUTS = ("probabilities",)

# the config sections this task reads (its report and `config show` list these)
SECTIONS = ("data", "split", "model", "train", "eval")


def save_bundle(
    folder: Path,
    model: nn.Module,
    config: RunConfig,
    classes: tuple[str, ...],
    prep: Preprocessing,
    threshold: float | None = None,
    positive: str | None = None,
) -> Any:
    return write_bundle(
        folder,
        model,
        config,
        prep,
        {
            "task": "classify",
            "classes": list(classes),
            "positive_class": positive,
            # NG probability at or above this is NG; without a binary problem, argmax decides
            "threshold": threshold,
            # test-time augmentation: the graph averages the probabilities of these views
            "tta": config.eval.tta,
        },
    )


def load_model(folder: Path, meta: dict[str, Any]) -> nn.Module:
    model = timm.create_model(meta["backbone"], pretrained=False, num_classes=len(meta["classes"]))
    model.load_state_dict(load_weights(meta))
    return model.eval()


def graph(model: nn.Module, images: torch.Tensor, views: int = 1, **options: Any) -> torch.Tensor:
    """Class probabilities, averaged over `views` flips / turns of each image (eval.tta)."""
    return class_probabilities(model, images, views)


def decide(inspector, names: Sequence[str], outputs: list, images: Sequence[Any]) -> list:
    return [
        decide_class(name, row, inspector.classes, inspector.positive, inspector.threshold)
        for name, row in zip(names, outputs[0], strict=True)
    ]


def score_names(meta: dict[str, Any]) -> list[str]:
    return list(meta["classes"])


def summary(result: dict[str, Any]) -> str:
    lines = [
        f"test accuracy {result['accuracy']:.4f}  balanced "
        f"{result['balanced_accuracy']:.4f}  macro F1 {result['macro_f1']:.4f}  "
        f"({result['split_size']} images)"
    ]
    binary = result.get("binary", {})
    if "auc" in binary:
        point = binary["at_threshold"]
        lines.append(
            f"ROC AUC {binary['auc']:.4f}; at threshold {binary['threshold']:.3f} "
            f"({binary['threshold_rule']}): NG recall {point['ng_recall']:.3f}, "
            f"OK specificity {point['ok_specificity']:.3f}"
        )
    lines.append(
        f"training {result['train_seconds']:.1f} s, peak memory {result['peak_rss_mb']:.0f} MB"
    )
    return "\n".join(lines)


def eval_summary(result: dict[str, Any]) -> str:
    return (
        f"accuracy {result['accuracy']:.4f}  balanced {result['balanced_accuracy']:.4f}  "
        f"macro F1 {result['macro_f1']:.4f} on {result['images']} images"
    )


# an operator acts on the predicted class; learning-curve trains classifiers
DECIDES_BY_CLASS = True
LEARNING_CURVE = True


def truth(sample: Any, classes: Sequence[str]) -> str:
    """The class a labelled image should get."""
    return str(sample.label)
