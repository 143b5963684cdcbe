"""What a model says about one image, how that is decided from its raw outputs, and how it
is written to disk: one code path for the Inspector on the line, `defectkit predict` and a
training run's own predictions.csv, so that a report shows exactly what the bundle decides.

CSV columns: image, label, ok, ng_score, threshold, regions (a count), score_<name> for every
score the model gives, error (why a file was skipped; empty otherwise), then any extra
columns the caller adds (a run adds `truth` and its per-image numbers). JSONL holds the same
fields, with the regions as boxes and the scores as a mapping."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from defectkit.data.samples import ok_class

MAX_REGIONS = 20
# Scores are compared to this many decimals: two backends (PyTorch, ONNX Runtime) or two CPU
# kernels give the same model's scores within 1e-4, so nearer than that is a tie.
SCORE_DECIMALS = 4
SCORE_TOLERANCE = 10.0**-SCORE_DECIMALS


@dataclass
class Region:
    """A connected area of the anomaly map at or above the threshold, or a detector's box,
    in image pixels."""

    x: float  # whole pixels for map regions; boxes keep a tenth of a pixel
    y: float
    width: float
    height: float
    area: int
    peak: float  # highest normalised score inside (0.5 = the threshold); a box's score
    label: str = ""  # a box's class (detect)


@dataclass
class Prediction:
    image: str
    label: str
    scores: dict[str, float]
    ok: bool | None  # None when the model's classes say nothing about OK / NG
    ng_score: float | None = None  # anomaly: normalised, 0.5 at the threshold
    threshold: float | None = None  # on the same scale as ng_score
    heat_map: Any = None  # anomaly: (H, W) normalised map; segment: defect probability
    mask: Any = None  # segment: (H, W) bool defect mask after the gate, at the image's size
    regions: list[Region] = field(default_factory=list)
    # detect: every box the model keeps (score >= its floor, after NMS), the called ones
    # (score >= threshold) being `regions`; COCO mAP and the results JSON read these
    boxes: list[Region] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the heat map and mask, JSON-ready."""
        out = asdict(self)
        out.pop("heat_map")
        out.pop("mask")
        return out


def normalise(raw: np.ndarray | float, norm: dict[str, float]) -> np.ndarray:
    """Raw anomaly scores -> [0, 1] with the calibrated threshold at 0.5 and the spread of the
    defect-free calibration scores setting the scale, so that maps and scores of any method
    read the same way."""
    value = 0.5 + (np.asarray(raw, dtype=np.float64) - norm["threshold"]) / (2 * norm["scale"])
    return np.clip(value, 0.0, 1.0)


def normalisation_of(meta: dict[str, Any]) -> dict[str, float]:
    """Bundles written before normalisation was stored map 0 -> 0 and 2 x threshold -> 1."""
    return meta.get("normalisation") or {
        "threshold": meta["threshold"],
        "scale": max(abs(meta["threshold"]), 1e-12),
    }


def find_regions(heat_map: np.ndarray, level: float = 0.5) -> list[Region]:
    from scipy import ndimage

    labels, count = ndimage.label(heat_map >= level)
    regions = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[box] == index
        regions.append(
            Region(
                x=box[1].start,
                y=box[0].start,
                width=box[1].stop - box[1].start,
                height=box[0].stop - box[0].start,
                area=int(inside.sum()),
                peak=float(heat_map[box][inside].max()),
            )
        )
    # the strongest first (peaks equal to SCORE_DECIMALS ordered by place), the first 20 kept
    return sorted(regions, key=box_order)[:MAX_REGIONS] if count else []


def decide_class(
    name: str,
    probabilities: np.ndarray,
    classes: list[str],
    positive: str | None = None,
    threshold: float | None = None,
) -> Prediction:
    """A classifier's call. An OK/NG model with a threshold calls NG when the NG class's
    probability reaches it (else the likeliest other class); others take the likeliest class,
    OK when that is an OK-named class."""
    scores = {c: float(p) for c, p in zip(classes, probabilities, strict=True)}
    label = classes[int(np.argmax(probabilities))]
    if positive is not None and threshold is not None:
        ng_score = scores[positive]
        is_ng = ng_score >= threshold
        negatives = [c for c in classes if c != positive]
        label = positive if is_ng else max(negatives, key=scores.__getitem__)
        return Prediction(name, label, scores, not is_ng, ng_score, threshold)
    good = ok_class(classes)
    ok = None if good is None else label == good
    ng_score = None if good is None else 1.0 - scores[good]
    return Prediction(name, label, scores, ok, ng_score)


def decide_anomaly(
    name: str,
    raw: float,
    full_map: np.ndarray,
    classes: list[str],
    threshold: float,
    norm: dict[str, float],
    raw_maps: bool = False,
) -> Prediction:
    """An anomaly model's call: the raw image score against the threshold calibrated at fit;
    score and map reported normalised (0.5 = threshold), regions where the map passes it.
    `full_map` is the raw map at the image's own size."""
    good, bad = classes
    ok = raw < threshold
    heat = normalise(full_map, norm).astype(np.float32)
    score = float(normalise(raw, norm))
    return Prediction(
        name,
        good if ok else bad,
        {"anomaly_score": float(raw), bad: score},
        ok,
        score,
        0.5,
        heat_map=full_map.astype(np.float32) if raw_maps else heat,
        regions=[] if ok else find_regions(heat),
    )


def drop_small_regions(mask: np.ndarray, min_area: int) -> np.ndarray:
    """The mask without 8-connected regions smaller than `min_area` pixels."""
    if not min_area or not mask.any():
        return mask
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    areas = ndimage.sum(mask, labels, range(1, count + 1))
    keep = np.concatenate([[False], np.asarray(areas) >= min_area])
    return keep[labels]


def decide_segment(
    name: str,
    probability: np.ndarray,
    gate: float,
    gate_threshold: float | None,
    mask_threshold: float,
    min_region: int,
) -> Prediction:
    """A segmenter's call from its pixel probabilities at the image's own size: the mask is
    what passes mask_threshold, without regions under min_region pixels, and empty when the
    gate calls the image OK. With a gate (gate_threshold given) the gate decides OK/NG (an NG
    image may show no region); without one, NG = a non-empty mask."""
    mask = drop_small_regions(probability >= mask_threshold, min_region)
    if gate_threshold is not None:
        ok = gate < gate_threshold
        mask = np.zeros_like(mask) if ok else mask
    else:
        ok = not mask.any()
    return Prediction(
        name,
        "ok" if ok else "defect",
        {"defect": float(probability.max()), "gate": float(gate)},
        ok,
        float(gate) if gate_threshold is not None else float(probability.max()),
        gate_threshold if gate_threshold is not None else mask_threshold,
        heat_map=probability.astype(np.float32),
        mask=mask,
        regions=find_regions(np.where(mask, probability, 0.0), mask_threshold),
    )


def decide_detect(
    name: str,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    threshold: float,
    class_thresholds: Sequence[float] | None = None,
) -> Prediction:
    """A detector's call from its kept boxes (image pixels, x1 y1 x2 y2), their scores and
    class indices: NG when a box scores at or above the threshold, labelled with the best
    box's class; the called boxes are the regions. scores: each class's best box score.

    With class_thresholds (each class's box threshold, chosen on validation) every score is
    first put on the scale where its class's threshold is 0.5 (calibrated_box_scores), so
    `threshold` 0.5 calls each class's boxes at its own threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    if class_thresholds is not None and len(scores):
        cuts = np.asarray(class_thresholds, dtype=np.float64)[np.asarray(labels, dtype=np.int64)]
        scores = calibrated_box_scores(scores, cuts)
    kept = [
        Region(
            x=round(float(x1), 1),
            y=round(float(y1), 1),
            width=round(float(x2 - x1), 1),
            height=round(float(y2 - y1), 1),
            area=round(float((x2 - x1) * (y2 - y1))),
            peak=float(score),
            label=classes[int(label)],
        )
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels, strict=True)
    ]
    kept.sort(key=box_order)
    best = {c: 0.0 for c in classes}
    for region in kept:
        best[region.label] = max(best[region.label], region.peak)
    ng_score = kept[0].peak if kept else 0.0
    ok = ng_score < threshold
    return Prediction(
        name,
        "ok" if ok else kept[0].label,
        best,
        ok,
        ng_score,
        threshold,
        regions=[r for r in kept if r.peak >= threshold][:MAX_REGIONS],
        boxes=kept,
    )


def calibrated_box_scores(scores: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Box scores in [0, 1] moved so that each box's class threshold (`cuts`, one per box)
    lands on 0.5: linear from 0 to the cut and from the cut to 1. The order of one class's
    boxes is kept (its AP does not change); boxes of different classes become comparable."""
    cuts = np.clip(cuts, 1e-6, 1 - 1e-6)
    below = 0.5 * scores / cuts
    above = 0.5 + 0.5 * (scores - cuts) / (1 - cuts)
    return np.where(scores < cuts, below, above)


def box_order(box: Region) -> tuple[float, str, float, float, float, float]:
    """A deterministic order of boxes: score descending, with scores equal to SCORE_DECIMALS
    as ties (another CPU kernel moves them by 1e-7), then class, then position, then size."""
    return (-round(box.peak, SCORE_DECIMALS), box.label, box.x, box.y, box.width, box.height)


def box_iou(a: Region, b: Region) -> float:
    """Intersection over union of two boxes (x, y, width, height)."""
    width = min(a.x + a.width, b.x + b.width) - max(a.x, b.x)
    height = min(a.y + a.height, b.y + b.height) - max(a.y, b.y)
    inter = max(width, 0.0) * max(height, 0.0)
    union = a.width * a.height + b.width * b.height - inter
    if union > 0:
        return inter / union
    # boxes without area (a line, a point): the same box or none
    same = all(abs(u - v) < 0.05 for u, v in zip(_corners(a), _corners(b), strict=True))
    return 1.0 if same else 0.0


def _corners(box: Region) -> tuple[float, float, float, float]:
    return box.x, box.y, box.x + box.width, box.y + box.height


def match_boxes(
    a: list[Region], b: list[Region], min_iou: float = 0.9, tolerance: float = SCORE_TOLERANCE
) -> tuple[list[tuple[Region, Region]], list[Region], list[Region]]:
    """The same boxes found twice (two backends, two machines): pairs of one class with
    IoU >= min_iou and scores within `tolerance`, greedily from the best score down; returns
    (pairs, left of a, left of b). Positions in the lists never matter."""
    free = sorted(b, key=box_order)
    pairs: list[tuple[Region, Region]] = []
    left: list[Region] = []
    for box in sorted(a, key=box_order):
        fits = [
            (box_iou(box, other), n)
            for n, other in enumerate(free)
            if other.label == box.label and abs(other.peak - box.peak) <= tolerance
        ]
        fits = [(iou, n) for iou, n in fits if iou >= min_iou]
        if fits:
            _, n = max(fits)
            pairs.append((box, free.pop(n)))
        else:
            left.append(box)
    return pairs, left, free


def box_differences(
    a: list[Region],
    b: list[Region],
    floor: float,
    most: int,
    nms_iou: float,
    tolerance: float = SCORE_TOLERANCE,
) -> tuple[list[Region], list[Region]]:
    """The boxes of `a` and of `b` (one image, two backends or machines, each kept with the
    score floor, NMS at nms_iou and the `most` best) that are not the same box found twice
    (match_boxes) and that no near-tie explains: a box within `tolerance` of the floor, or of
    the weakest box when `most` were kept, may fall either side of that cut; and of two
    overlapping boxes of one class with near-equal scores, NMS may keep either."""
    _, left_a, left_b = match_boxes(a, b, tolerance=tolerance)

    def at_a_cut(box: Region, kept: list[Region]) -> bool:
        if abs(box.peak - floor) <= tolerance:
            return True
        full = len(a) >= most or len(b) >= most
        return full and abs(box.peak - min(r.peak for r in kept)) <= tolerance

    def twin(box: Region, others: list[Region]) -> bool:
        return any(
            o.label == box.label
            and abs(o.peak - box.peak) <= tolerance
            and box_iou(o, box) > nms_iou
            for o in others
        )

    return (
        [r for r in left_a if not (at_a_cut(r, a + b) or twin(r, left_b))],
        [r for r in left_b if not (at_a_cut(r, a + b) or twin(r, left_a))],
    )


BASE_COLUMNS = ["image", "label", "ok", "ng_score", "threshold", "regions"]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.9g}"  # round-trips a float32


class PredictionWriter:
    """Writes predictions (and files that could not be inspected) as CSV or JSONL, one row
    at a time, so a long run's output grows as it goes."""

    def __init__(self, path: Path, score_names: list[str], extra: list[str] | None = None):
        self.path, self.jsonl = Path(path), Path(path).suffix == ".jsonl"
        self.extra = list(extra or [])
        self.columns = [
            *BASE_COLUMNS,
            *(f"score_{name}" for name in score_names),
            "error",
            *self.extra,
        ]
        self.handle: TextIO | None = None
        self.writer: Any = None
        self.rows = 0

    def __enter__(self) -> PredictionWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w", newline="")
        if not self.jsonl:
            self.writer = csv.DictWriter(self.handle, fieldnames=self.columns)
            self.writer.writeheader()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.handle is not None
        self.handle.close()

    def write(self, prediction: Any, **extra: Any) -> None:
        if self.jsonl:
            row = {
                "image": prediction.image,
                "label": prediction.label,
                "ok": prediction.ok,
                "ng_score": prediction.ng_score,
                "threshold": prediction.threshold,
                "scores": prediction.scores,
                "regions": [asdict(r) for r in prediction.regions],
                "error": None,
                **extra,
            }
        else:
            row = {
                "image": prediction.image,
                "label": prediction.label,
                "ok": "" if prediction.ok is None else prediction.ok,
                "ng_score": _number(prediction.ng_score),
                "threshold": _number(prediction.threshold),
                "regions": len(prediction.regions),
                **{f"score_{k}": _number(v) for k, v in prediction.scores.items()},
                "error": "",
                **extra,
            }
        self._emit(row)

    def write_error(self, image: str, error: str, **extra: Any) -> None:
        """A file that could not be inspected: its row says why, the rest stays empty."""
        self._emit({"image": image, "error": error, **extra})

    def _emit(self, row: dict[str, Any]) -> None:
        assert self.handle is not None
        if self.jsonl:
            self.handle.write(json.dumps(row) + "\n")
        else:
            self.writer.writerow({k: row.get(k, "") for k in self.columns})
        self.rows += 1


class CocoWriter:
    """A detector's boxes as one COCO JSON file (images, categories, annotations with each
    box's score): the format evaluators read and labelling tools import as pre-labels;
    `defectkit data` reads it back (the coco layout). Boxes below the threshold are kept
    (evaluation wants them); `called` marks those at or above it."""

    def __init__(self, path: Path, classes: list[str]):
        self.path, self.classes = Path(path), list(classes)
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, prediction: Prediction) -> None:
        from PIL import Image

        image_id = len(self.images) + 1
        with Image.open(prediction.image) as image:  # the header only
            width, height = image.size
        self.images.append(
            {"id": image_id, "file_name": str(prediction.image), "width": width, "height": height}
        )
        for box in prediction.boxes:
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": self.classes.index(box.label) + 1,
                    "bbox": [box.x, box.y, box.width, box.height],
                    "area": box.width * box.height,
                    "iscrowd": 0,
                    "score": box.peak,
                    "called": prediction.threshold is not None and box.peak >= prediction.threshold,
                }
            )

    def close(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(self.classes)]
        payload = {"images": self.images, "categories": categories, "annotations": self.annotations}
        self.path.write_text(json.dumps(payload, indent=1))
