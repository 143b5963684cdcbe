"""Metrics the field reports: accuracy, balanced accuracy, per-class precision / recall / F1,
confusion matrix; for OK/NG, ROC + AUC, PR + AP and threshold choice. Plain functions over
numpy arrays, so tests can check them against numbers worked out by hand."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import pairwise
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


class PixelRanking:
    """Every pixel of a set of anomaly maps sorted once by score, with its truth, its image
    and its AUPRO weight: pixel AUROC and AUPRO of all images or of any subset of them
    (one defect class, all but one class) without sorting again. 13 bytes a pixel kept, 17
    at the peak of building (float32 scores and weights, int32 image and sort indices), so
    the magnetic tile test set's 61 million pixels take about 1 GB. `maps` may be any
    iterable (a generator resizing each map in turn keeps only one at full size)."""

    def __init__(self, masks: Sequence[np.ndarray], maps: Iterable[np.ndarray]):
        from scipy import ndimage

        self.sizes = np.array([int(np.size(mask)) for mask in masks], np.int64)
        self.defects = np.array([int(np.count_nonzero(mask)) for mask in masks], np.int64)
        scores = np.empty(int(self.sizes.sum()), np.float32)
        weight = np.empty(int(self.sizes.sum()), np.float32)
        self.regions = []
        start, seen = 0, 0
        for i, (mask, amap) in enumerate(zip(masks, maps, strict=False)):
            if np.shape(mask) != np.shape(amap):
                raise ValueError(f"image {i}: mask {np.shape(mask)} vs map {np.shape(amap)}")
            labelled, count = ndimage.label(np.asarray(mask) > 0)
            area = np.bincount(labelled.ravel()).astype(np.float32)
            end = start + int(self.sizes[i])
            scores[start:end] = np.asarray(amap, dtype=np.float32).ravel()
            # AUPRO weight: 1 / |region| for a defect pixel, so every region counts equally
            weight[start:end] = np.where(labelled > 0, 1 / area[labelled].clip(min=1), 0).ravel()
            self.regions.append(count)
            start, seen = end, i + 1
        if seen != len(masks):
            raise ValueError(f"{len(masks)} masks for {seen} maps")
        order = np.argsort(scores, kind="stable").astype(np.int32)
        self.scores = scores[order]
        del scores
        self.weight = weight[order]
        del weight
        self.truth = self.weight > 0
        self.image = np.repeat(np.arange(len(self.sizes), dtype=np.int32), self.sizes)[order]

    # pixels per piece of work: the curves' running sums over all pixels at once would take
    # 40 bytes a pixel (int64 and float64 arrays of every pixel)
    PIECE = 1 << 22

    def _chosen(self, images: Sequence[int] | None) -> np.ndarray:
        if images is None:
            return np.ones(len(self.regions), bool)
        chosen = np.zeros(len(self.regions), bool)
        chosen[list(images)] = True
        return chosen

    def _pieces(
        self, chosen: np.ndarray, descending: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(scores, truth, weight) of the chosen images' pixels in score order, in pieces
        of about PIECE pixels that end where a run of equal scores ends (so that no tie is
        split between two pieces)."""
        n, bounds = len(self.scores), [0]
        while bounds[-1] < n:
            end = min(bounds[-1] + self.PIECE, n)
            if end < n:
                end = int(np.searchsorted(self.scores, self.scores[end - 1], side="right"))
            bounds.append(end)
        spans = list(pairwise(bounds))
        every = bool(chosen.all())
        for a, b in reversed(spans) if descending else spans:
            scores, truth, weight = self.scores[a:b], self.truth[a:b], self.weight[a:b]
            if not every:
                keep = chosen[self.image[a:b]]
                scores, truth, weight = scores[keep], truth[keep], weight[keep]
            if descending:
                scores, truth, weight = scores[::-1], truth[::-1], weight[::-1]
            if len(scores):
                yield scores, truth, weight

    def auroc(self, images: Sequence[int] | None = None) -> float:
        """ROC AUC over the pixels: the chance that a defect pixel scores above a defect-free
        one, ties counting half (the Mann-Whitney statistic), exactly."""
        chosen = self._chosen(images)
        positives = int(self.defects[chosen].sum())
        negatives = int(self.sizes[chosen].sum()) - positives
        if positives == 0 or negatives == 0:
            raise ValueError("pixel AUROC needs both defect and defect-free pixels")
        wins, below = 0.0, 0
        for scores, truth, _ in self._pieces(chosen):
            ends = _tie_ends(scores)
            positive_in = np.diff(np.cumsum(truth, dtype=np.int64)[ends], prepend=0)
            negative_in = np.diff(ends, prepend=-1) - positive_in
            negative_below = below + np.cumsum(negative_in) - negative_in
            wins += float(
                np.dot(positive_in.astype(np.float64), negative_below + 0.5 * negative_in)
            )
            below += int(negative_in.sum())
        return wins / positives / negatives

    def aupro(self, max_fpr: float = 0.3, images: Sequence[int] | None = None) -> float:
        """Area under the per-region-overlap curve up to `max_fpr`, divided by `max_fpr`
        (Bergmann et al., MVTec AD). Every connected defect region counts equally, however
        small: lowering the threshold past the pixels sorted by score, the mean overlap over
        R regions is cumsum(weight) / R; one curve point per distinct score, from the
        highest down, integrated piece by piece until the false-positive rate passes
        max_fpr."""
        chosen = self._chosen(images)
        regions = sum(self.regions[i] for i in np.flatnonzero(chosen))
        if regions == 0:
            raise ValueError("AUPRO needs at least one defect region in the masks")
        negatives = max(1, int(self.sizes[chosen].sum() - self.defects[chosen].sum()))
        area, last_fpr, last_pro, overlap, alarms = 0.0, 0.0, 0.0, 0.0, 0
        for scores, truth, weight in self._pieces(chosen, descending=True):
            ends = _tie_ends(scores)
            pro = (overlap + np.cumsum(weight, dtype=np.float64)[ends]) / regions
            fpr = (alarms + np.cumsum(~truth, dtype=np.int64)[ends]) / negatives
            overlap += float(weight.sum(dtype=np.float64))
            alarms += int((~truth).sum())
            fpr, pro = np.r_[last_fpr, fpr], np.r_[last_pro, pro]
            beyond = np.flatnonzero(fpr > max_fpr)
            if len(beyond):  # the curve passes max_fpr here: cut it there
                k = int(beyond[0])
                cut = float(np.interp(max_fpr, fpr[k - 1 : k + 1], pro[k - 1 : k + 1]))
                area += float(np.trapezoid(np.r_[pro[:k], cut], np.r_[fpr[:k], max_fpr]))
                return area / max_fpr
            area += float(np.trapezoid(pro, fpr))
            last_fpr, last_pro = float(fpr[-1]), float(pro[-1])
        area += (max_fpr - last_fpr) * last_pro  # every pixel flagged before max_fpr
        return area / max_fpr


def _tie_ends(sorted_scores: np.ndarray) -> np.ndarray:
    """Index of the last pixel of each run of equal scores."""
    return np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])


def aupro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], max_fpr: float = 0.3) -> float:
    return PixelRanking(masks, maps).aupro(max_fpr)


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    return PixelRanking(masks, maps).auroc()


def regions_of(mask: np.ndarray, min_area: int = 0) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (y1, x1, y2, x2), end exclusive, of a mask's 8-connected regions."""
    from scipy import ndimage

    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    boxes = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or (min_area and (labels[box] == index).sum() < min_area):
            continue
        boxes.append((box[0].start, box[1].start, box[0].stop, box[1].stop))
    return boxes


def box_ious(a: Sequence[tuple[int, ...]], b: Sequence[tuple[int, ...]]) -> np.ndarray:
    """(len(a), len(b)) IoUs of two lists of (y1, x1, y2, x2) boxes, in one array operation
    (a poor model can predict thousands of regions per image)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(1, -1, 4)
    h = (np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])).clip(min=0)
    w = (np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])).clip(min=0)
    inter = h * w
    area = lambda box: (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])  # noqa: E731
    union = area(a) + area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class SegmentationScores:
    """Accumulates, image by image at each image's own resolution: pixel counts for defect
    IoU, Dice and mIoU over {background, defect} (dataset-level, so large defects weigh
    more, as in the steel study); image-level NG from "mask not empty"; region recall and
    precision where a true and a predicted region match at box IoU >= `region_iou` (DeepPCB's
    criterion); and defect IoU per image label."""

    def __init__(self, region_iou: float = 0.33):
        self.region_iou = region_iou
        self.tp = self.fp = self.fn = self.tn = 0
        self.per_label: dict[str, list[int]] = {}
        self.image_true: list[bool] = []
        self.image_pred: list[bool] = []
        self.true_regions = self.found_regions = self.pred_regions = self.right_regions = 0
        self.per_image: list[tuple[int, int, int, int]] = []  # tp, fp, fn, tn of each image

    def add(self, truth: np.ndarray, predicted: np.ndarray, label: str | None = None) -> float:
        """One image; returns its own defect IoU (1.0 when both are empty)."""
        truth, predicted = truth.astype(bool), predicted.astype(bool)
        tp = int((truth & predicted).sum())
        fp = int((~truth & predicted).sum())
        fn = int((truth & ~predicted).sum())
        self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn
        self.tn += truth.size - tp - fp - fn
        self.per_image.append((tp, fp, fn, truth.size - tp - fp - fn))
        counts = self.per_label.setdefault(str(label), [0, 0, 0])
        counts[0], counts[1], counts[2] = counts[0] + tp, counts[1] + fp, counts[2] + fn
        self.image_true.append(bool(truth.any()))
        self.image_pred.append(bool(predicted.any()))
        true_boxes, pred_boxes = regions_of(truth), regions_of(predicted)
        self.true_regions += len(true_boxes)
        self.pred_regions += len(pred_boxes)
        matched = box_ious(true_boxes, pred_boxes) >= self.region_iou
        self.found_regions += int(matched.any(1).sum())
        self.right_regions += int(matched.any(0).sum())
        return tp / (tp + fp + fn) if tp + fp + fn else 1.0

    def result(self) -> dict[str, Any]:
        def iou(tp: int, fp: int, fn: int) -> float:
            return tp / (tp + fp + fn) if tp + fp + fn else 1.0

        defect = iou(self.tp, self.fp, self.fn)
        wrong = self.fp + self.fn
        found, right = self.found_regions, self.right_regions
        background = iou(self.tn, self.fn, self.fp)
        truth, predicted = np.array(self.image_true), np.array(self.image_pred)
        ng, ok = truth.sum(), (~truth).sum()
        return {
            "defect_iou": defect,
            "dice": 2 * self.tp / (2 * self.tp + wrong) if self.tp + wrong else 1.0,
            "background_iou": background,
            "miou": (defect + background) / 2,
            "ng_recall": float((truth & predicted).sum() / ng) if ng else None,
            "ok_specificity": float((~truth & ~predicted).sum() / ok) if ok else None,
            "region_recall": found / self.true_regions if self.true_regions else None,
            "region_precision": right / self.pred_regions if self.pred_regions else None,
            "regions": {"true": self.true_regions, "predicted": self.pred_regions},
            # labels whose images hold defect pixels (an IoU of OK images says nothing)
            "per_label_iou": {k: iou(*v) for k, v in sorted(self.per_label.items()) if v[0] + v[2]},
            "images": len(self.image_true),
        }

    def uncertainty(self) -> dict[str, Any]:
        """Bootstrap intervals of defect IoU, Dice and mIoU, resampling whole images (their
        pixel counts pooled as in `result`)."""
        counts = np.array(self.per_image, dtype=np.int64).reshape(-1, 4)

        def iou(tp: int, fp: int, fn: int) -> float:
            return tp / (tp + fp + fn) if tp + fp + fn else 1.0

        def statistic(i: np.ndarray) -> dict[str, float | None]:
            tp, fp, fn, tn = counts[i].sum(0)
            defect = iou(tp, fp, fn)
            return {
                "defect_iou": defect,
                "dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
                "miou": (defect + iou(tn, fn, fp)) / 2,
            }

        return uncertainty(statistic, len(counts), int(np.sum(self.image_true)))


def mcnemar(only_a: int, only_b: int) -> dict[str, float]:
    """McNemar's test of two models' paired decisions on the same images: `only_a` images
    only model A got right, `only_b` only B. The exact two-sided binomial p-value (what to
    read with few disagreements) and the continuity-corrected chi-square statistic."""
    from scipy.stats import binomtest, chi2

    n = only_a + only_b
    if n == 0:
        return {"only_a": 0, "only_b": 0, "p_exact": 1.0, "chi2": 0.0, "p_chi2": 1.0}
    statistic = (abs(only_a - only_b) - 1) ** 2 / n
    return {
        "only_a": only_a,
        "only_b": only_b,
        "p_exact": float(binomtest(min(only_a, only_b), n, 0.5).pvalue),
        "chi2": float(statistic),
        "p_chi2": float(chi2.sf(statistic, 1)),
    }


# ---------------------------------------------------------------- uncertainty
BOOTSTRAP_ROUNDS = 1000
FEW_NG = 30  # fewer NG test images than this: the report warns that the numbers are loose


def bootstrap_intervals(
    statistic: Callable[[np.ndarray], dict[str, float | None]],
    n: int,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals: `statistic(indices)` gives named numbers of the test
    images at `indices` (drawn with replacement, `rounds` times); each number's middle
    `level` share of resampled values is its interval. A resample where a number is
    undefined (an AUROC without NG images) is skipped for that number; a number defined in
    fewer than half the resamples gets no interval."""
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(rounds):
        for key, value in statistic(rng.integers(0, n, n)).items():
            if value is not None and np.isfinite(value):
                values.setdefault(key, []).append(float(value))
    tail = 100 * (1 - level) / 2
    return {
        key: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]
        for key, v in values.items()
        if len(v) >= rounds / 2
    }


def uncertainty(
    statistic: Callable[[np.ndarray], dict[str, float | None]], n: int, ng_images: int
) -> dict[str, Any]:
    """What metrics.json says of how sure its numbers are: 95% bootstrap intervals over the
    test images and, with few NG images, a warning."""
    out: dict[str, Any] = {
        "intervals": bootstrap_intervals(statistic, n),
        "interval_method": f"95% percentile bootstrap over the {n} test images "
        f"({BOOTSTRAP_ROUNDS} resamples)",
        "ng_test_images": int(ng_images),
    }
    if ng_images < FEW_NG:
        out["few_ng_warning"] = (
            f"only {ng_images} NG image(s) in the test part (fewer than {FEW_NG}): one image "
            f"moves NG recall by {1 / max(1, ng_images):.2f} and AUROC-type numbers swing with "
            "the split; read the intervals, and add NG images before trusting a difference"
        )
    return out
