"""A segment bundle scored on labelled images (`defectkit eval`, compare): the masks the
Inspector gives on the line against each image's mask file or filled boxes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from defectkit.data.segmentation import read_mask
from defectkit.metrics import SegmentationScores


def evaluate_bundle(inspector, samples: Sequence[Any], data: str) -> dict[str, Any]:
    """Masks as the Inspector gives them on the line (a gated model's gate makes the OK/NG
    call and empties the mask of OK images), against each image's mask file or filled
    boxes: defect IoU, Dice, mIoU, per-label IoU, region recall / precision, and NG recall /
    OK specificity of the Inspector's own OK/NG decisions."""
    references = None
    if inspector.meta.get("reference"):
        missing = [s.image for s in samples if s.reference is None]
        if missing:
            raise ValueError(
                f"the model takes each image with its aligned reference, but {len(missing)} "
                f"image(s) of {data} have none (e.g. {missing[0]}): use a layout that pairs "
                "them (deeppcb: <id>_test.jpg with <id>_temp.jpg)"
            )
        references = [s.reference for s in samples]
    if not any(s.mask is not None or s.boxes for s in samples):
        raise ValueError(
            f"{data} has no masks or boxes: segmentation evaluation needs an image + mask, "
            "VOC, YOLO or DeepPCB layout (`defectkit data inspect` shows what was found)"
        )
    scores = SegmentationScores(inspector.meta.get("region_iou", 0.33))
    truth_ng, called_ng = [], []
    predictions = inspector.predict([s.image for s in samples], references=references)
    for sample, prediction in zip(samples, predictions, strict=True):
        truth = read_mask(sample)
        scores.add(truth, prediction.mask, sample.label)
        truth_ng.append(bool(truth.any()))
        called_ng.append(not prediction.ok)
    truth, called = np.array(truth_ng), np.array(called_ng)
    result = {**scores.result(), **scores.uncertainty()}
    result["ng_recall"] = float(called[truth].mean()) if truth.any() else None
    result["ok_specificity"] = float((~called[~truth]).mean()) if (~truth).any() else None
    result["ok_ng_from"] = "gate" if inspector.meta.get("gate") else "mask not empty"
    return {"threshold": inspector.threshold, **result}
