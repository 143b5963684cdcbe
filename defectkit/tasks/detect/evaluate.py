"""The detect task's metrics: COCO mAP@0.5 and mAP@0.5:0.95 with the standard evaluator
(pycocotools), AP@0.5 and the precision-recall curve per class, box recall and precision of
the called boxes (score >= threshold) at the dataset's own IoU, and the image-level OK/NG
call (NG = a called box) against the images' true boxes."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from defectkit.data.samples import Sample
from defectkit.metrics import uncertainty
from defectkit.predictions import Prediction, Region


def _xyxy(regions: Sequence[Region]) -> torch.Tensor:
    rows = [[r.x, r.y, r.x + r.width, r.y + r.height] for r in regions]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def coco_map(
    truths: Sequence[Sequence[tuple[int, float, float, float, float]]],
    detections: Sequence[Sequence[tuple[int, float, float, float, float, float]]],
    classes: Sequence[str],
) -> dict[str, Any]:
    """pycocotools' box evaluation. truths[i]: (class, x1, y1, x2, y2) of image i;
    detections[i]: (class, score, x1, y1, x2, y2). Returns map (0.5:0.95), map_50, map_75,
    ap_50 per class (None for a class without true boxes) and each class's precision at
    the 101 COCO recall points for IoU 0.5 (the report's PR curves)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth = COCO()
    truth.dataset = {
        "images": [{"id": i + 1} for i in range(len(truths))],
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(classes)],
        "annotations": [
            {
                "id": n + 1,
                "image_id": i + 1,
                "category_id": k + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
            }
            for n, (i, (k, x1, y1, x2, y2)) in enumerate(
                (i, box) for i, boxes in enumerate(truths) for box in boxes
            )
        ],
    }
    results = [
        {
            "image_id": i + 1,
            "category_id": k + 1,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score,
        }
        for i, boxes in enumerate(detections)
        for k, score, x1, y1, x2, y2 in boxes
    ]
    empty = {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
    has_truth = {k: any(b[0] == k for boxes in truths for b in boxes) for k in range(len(classes))}
    if not results or not truth.dataset["annotations"]:
        return {
            **empty,
            "ap_50": {c: (0.0 if has_truth[k] else None) for k, c in enumerate(classes)},
            "pr_50": {},
        }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth.createIndex()
        found = truth.loadRes(results)
        evaluation = COCOeval(truth, found, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # precision: [IoU thresholds, recall points, classes, areas, max detections]
    precision = evaluation.eval["precision"][0, :, :, 0, -1]
    ap_50, pr_50 = {}, {}
    for k, name in enumerate(classes):
        curve = precision[:, k]
        if not has_truth[k]:
            ap_50[name] = None
            continue
        ap_50[name] = float(np.mean(np.maximum(curve, 0)))
        pr_50[name] = [float(v) for v in np.maximum(curve, 0)]
    stats = evaluation.stats
    return {
        "map": float(max(stats[0], 0)),
        "map_50": float(max(stats[1], 0)),
        "map_75": float(max(stats[2], 0)),
        "ap_50": ap_50,
        "pr_50": pr_50,
    }


def match_boxes(
    truth: torch.Tensor, truth_labels: list[str], found: Sequence[Region], iou: float
) -> tuple[int, int]:
    """(true boxes found, predicted boxes that found one): greedy by score, one true box
    per predicted box of the same class overlapping at least `iou`."""
    from torchvision.ops import box_iou

    if not len(truth) or not found:
        return 0, 0
    overlaps = box_iou(_xyxy(found), truth)
    taken = torch.zeros(len(truth), dtype=torch.bool)
    hits = 0
    for row, region in enumerate(found):  # found is sorted by score, best first
        same = torch.tensor([label == region.label for label in truth_labels])
        candidates = overlaps[row].masked_fill(~same | taken, -1)
        best = int(candidates.argmax())
        if candidates[best] >= iou:
            taken[best] = True
            hits += 1
    return int(taken.sum()), hits


def evaluate_detections(
    samples: Sequence[Sample],
    predictions: Sequence[Prediction],
    classes: Sequence[str],
    threshold: float,
    match_iou: float,
) -> dict[str, Any]:
    """Every metric of a test part from the decisions the bundle makes (Prediction.boxes
    for mAP, Prediction.regions, the called boxes, for recall / precision and OK/NG)."""
    index = {c: k for k, c in enumerate(classes)}
    truths, detections = [], []
    per_image = []  # true boxes, found, called, called right: for the intervals
    for sample, prediction in zip(samples, predictions, strict=True):
        truths.append([(index[b.label], b.x1, b.y1, b.x2, b.y2) for b in sample.boxes])
        detections.append(
            [
                (index[r.label], r.peak, r.x, r.y, r.x + r.width, r.y + r.height)
                for r in prediction.boxes
            ]
        )
        truth = torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in sample.boxes]).reshape(-1, 4)
        found, right = match_boxes(
            truth, [b.label for b in sample.boxes], prediction.regions, match_iou
        )
        per_image.append((len(sample.boxes), found, len(prediction.regions), right))
    counts = np.array(per_image, dtype=np.int64).reshape(-1, 4)
    true_boxes, found_true, called, called_right = (int(v) for v in counts.sum(0))
    result = coco_map(truths, detections, classes)
    is_ng = np.array([bool(s.boxes) for s in samples])
    ng_score = np.array([p.ng_score or 0.0 for p in predictions])
    called_ng = ng_score >= threshold
    both = is_ng.any() and (~is_ng).any()
    result.update(
        {
            "images": len(samples),
            "true_boxes": true_boxes,
            "box_recall": found_true / true_boxes if true_boxes else None,
            "box_precision": called_right / called if called else None,
            "match_iou": match_iou,
            "ng_recall": float(called_ng[is_ng].mean()) if is_ng.any() else None,
            "ok_specificity": float((~called_ng[~is_ng]).mean()) if (~is_ng).any() else None,
            "image_auroc": float(roc_auc_score(is_ng, ng_score)) if both else None,
        }
    )

    def statistic(i: np.ndarray) -> dict[str, float | None]:
        boxes, found, calls, right = counts[i].sum(0)
        ng, flagged = is_ng[i], called_ng[i]
        out = {
            "box_recall": found / boxes if boxes else None,
            "box_precision": right / calls if calls else None,
            "ng_recall": float(flagged[ng].mean()) if ng.any() else None,
            "ok_specificity": float((~flagged[~ng]).mean()) if (~ng).any() else None,
        }
        if ng.any() and (~ng).any():
            out["image_auroc"] = float(roc_auc_score(ng, ng_score[i]))
        return out

    result.update(uncertainty(statistic, len(samples), int(is_ng.sum())))
    # a COCO evaluation per resample would take minutes: mAP is reported without one
    result["interval_method"] += "; mAP has no interval (a COCO evaluation per resample)"
    return result


def evaluate_bundle(inspector, samples: Sequence[Any], data: str) -> dict[str, Any]:
    """COCO mAP of the boxes the Inspector gives on the line, box recall / precision of the
    called boxes at the bundle's match IoU, and the image-level OK/NG call."""
    if not any(s.boxes for s in samples):
        raise ValueError(
            f"{data} has no boxes: detection evaluation needs a VOC, YOLO or DeepPCB layout "
            "(`defectkit data inspect` shows what was found)"
        )
    references = [s.reference for s in samples] if inspector.meta.get("reference") else None
    predictions = list(inspector.predict([s.image for s in samples], references=references))
    result = evaluate_detections(
        samples,
        predictions,
        inspector.classes,
        inspector.threshold,
        inspector.meta.get("match_iou", 0.5),
    )
    return {"threshold": inspector.threshold, **result}
