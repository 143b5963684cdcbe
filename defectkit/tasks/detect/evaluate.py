"""The detect task's metrics: COCO mAP@0.5 and mAP@0.5:0.95 with COCO's evaluation
(faster-coco-eval, maintained; the tests hold it to the original pycocotools), AP@0.5 and
the precision-recall curve per class, each class's box threshold chosen on a curve of its
boxes, box recall and precision of the called boxes at the dataset's own IoU, and the
image-level OK/NG call (NG = a called box) against the images' true boxes."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from defectkit.config import BOX_RULES
from defectkit.data.samples import Sample
from defectkit.metrics import uncertainty
from defectkit.predictions import Prediction, Region


def _xyxy(regions: Sequence[Region]) -> torch.Tensor:
    rows = [[r.x, r.y, r.x + r.width, r.y + r.height] for r in regions]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


COCO_BACKENDS = ("faster_coco_eval", "pycocotools")


def coco_map(
    truths: Sequence[Sequence[tuple[int, float, float, float, float]]],
    detections: Sequence[Sequence[tuple[int, float, float, float, float, float]]],
    classes: Sequence[str],
    backend: str = "faster_coco_eval",
) -> dict[str, Any]:
    """COCO's box evaluation. truths[i]: (class, x1, y1, x2, y2) of image i;
    detections[i]: (class, score, x1, y1, x2, y2). Returns map (0.5:0.95), map_50, map_75,
    ap_50 per class (None for a class without true boxes) and each class's precision at
    the 101 COCO recall points for IoU 0.5 (the report's PR curves). backend: which
    implementation evaluates (pycocotools, unmaintained, for the agreement test)."""
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval

        # it logs its summary table at INFO on every call (each epoch's validation)
        logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)
    elif backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        raise ValueError(f"unknown COCO backend {backend!r}; use one of {COCO_BACKENDS}")

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
    with contextlib.redirect_stdout(io.StringIO()):  # both print their progress
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
    same = torch.tensor([[label == r.label for label in truth_labels] for r in found])
    hits = greedy_hits(box_iou(_xyxy(found), truth), same, iou)
    return int(hits.sum()), int(hits.sum())


def greedy_hits(overlaps: torch.Tensor, allowed: torch.Tensor, iou: float) -> torch.Tensor:
    """Which predicted boxes (rows, best score first) find a true box (columns): each takes
    the free allowed true box it overlaps most, when that overlap is at least `iou`."""
    taken = torch.zeros(overlaps.shape[1], dtype=torch.bool)
    hits = torch.zeros(overlaps.shape[0], dtype=torch.bool)
    for row in range(overlaps.shape[0]):
        candidates = overlaps[row].masked_fill(~allowed[row] | taken, -1)
        best = int(candidates.argmax())
        if candidates[best] >= iou:
            taken[best] = hits[row] = True
    return hits


def box_curves(
    truths: Sequence[Sequence[tuple[int, float, float, float, float]]],
    detections: Sequence[Sequence[tuple[int, float, float, float, float, float]]],
    classes: Sequence[str],
    iou: float,
) -> dict[str, dict[str, Any]]:
    """Each class's boxes as a precision-recall curve over the score threshold (inputs as
    coco_map). Within an image, boxes of a class take true boxes of that class greedily by
    score, one each, at IoU >= iou. Per class: `scores` (descending, one per distinct
    score), `precision` and `recall` of the boxes scored at or above each, and `true` (the
    class's true boxes)."""
    from torchvision.ops import box_iou

    found: dict[int, list[tuple[float, bool]]] = {k: [] for k in range(len(classes))}
    true = np.zeros(len(classes), dtype=np.int64)
    for image_truths, image_boxes in zip(truths, detections, strict=True):
        for k in range(len(classes)):
            mine = torch.tensor([t[1:] for t in image_truths if t[0] == k]).reshape(-1, 4)
            true[k] += len(mine)
            boxes = sorted((d for d in image_boxes if d[0] == k), key=lambda d: -d[1])
            if not boxes:
                continue
            if not len(mine):
                found[k] += [(d[1], False) for d in boxes]
                continue
            overlaps = box_iou(torch.tensor([d[2:] for d in boxes]), mine.float())
            hits = greedy_hits(overlaps, torch.ones_like(overlaps, dtype=torch.bool), iou)
            found[k] += [(box[1], bool(hit)) for box, hit in zip(boxes, hits, strict=True)]
    curves = {}
    for k, name in enumerate(classes):
        pairs = sorted(found[k], key=lambda pair: -pair[0])
        scores = np.array([p[0] for p in pairs], dtype=np.float64)
        hits = np.cumsum([p[1] for p in pairs], dtype=np.float64)
        # one point per distinct score: the last box of each run of equal scores
        last = np.nonzero(np.append(np.diff(scores) != 0, True))[0][: len(scores)]
        curves[name] = {
            "scores": scores[last],
            "precision": hits[last] / (last + 1),
            "recall": hits[last] / true[k] if true[k] else np.zeros(len(last)),
            "true": int(true[k]),
        }
    return curves


def choose_box_thresholds(
    curves: dict[str, dict[str, Any]], rule: str, target: float, fallback: float, floor: float
) -> dict[str, float]:
    """Each class's box threshold from its validation curve. f1: the point with the best F1
    (the highest score among equals); precision: the lowest score whose precision reaches
    `target` (the most recall at that precision), the best F1 where no score reaches it.
    Every threshold between the chosen point's score and the next box's below it keeps the
    same validation boxes: the threshold goes halfway (the widest margin on both sides; the
    score floor stands in below the last box), so a test box scored a little lower than its
    validation counterparts is still called (benchmarks/RESULTS.md, deeppcb-detect rows
    default and default_5cb0fb8). A class without validation boxes or true boxes keeps
    `fallback`; no threshold goes below the score floor."""
    if rule not in BOX_RULES:
        raise ValueError(f"unknown detect.box_rule {rule!r}; use one of {BOX_RULES}")
    chosen = {}
    for name, curve in curves.items():
        scores, precision, recall = curve["scores"], curve["precision"], curve["recall"]
        if not curve["true"] or not len(scores):
            chosen[name] = fallback
            continue
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        pick = int(np.argmax(f1))
        if rule == "precision":
            reached = np.nonzero(precision >= target)[0]
            if len(reached):
                pick = int(reached[-1])
        below = float(scores[pick + 1]) if pick + 1 < len(scores) else floor
        chosen[name] = max((float(scores[pick]) + below) / 2, floor)
    return chosen


def point_at(curve: dict[str, Any], threshold: float) -> dict[str, float | None]:
    """A curve's precision and recall for the boxes scored at or above `threshold`."""
    at = np.nonzero(curve["scores"] >= threshold)[0]
    if not len(at):
        return {"precision": None, "recall": 0.0 if curve["true"] else None}
    i = int(at[-1])
    return {
        "precision": float(curve["precision"][i]),
        "recall": float(curve["recall"][i]) if curve["true"] else None,
    }


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
    curves = box_curves(truths, detections, classes, match_iou)
    # each class's boxes called at the threshold: precision and recall (before MAX_REGIONS)
    result["box_points"] = {c: point_at(curves[c], threshold) for c in classes}
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
