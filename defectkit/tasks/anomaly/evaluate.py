"""The anomaly task's metrics: image AUROC, pixel AUROC and AUPRO at each mask's own
resolution, F1-max and F1 at the calibrated threshold, and per defect class the share
flagged and the pixel AUROC with the good images, inside its own images and without it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from defectkit.data.samples import DatasetError, Sample
from defectkit.data.segmentation import read_mask
from defectkit.metrics import PixelRanking, f1_max, rates_at, uncertainty


def evaluate_anomaly(
    samples: Sequence[Sample],
    good: str,
    scores: np.ndarray,
    maps: Sequence[torch.Tensor],
    threshold: float,
) -> dict[str, Any]:
    """Image AUROC, F1-max and F1 at the calibrated threshold; pixel AUROC and AUPRO with
    maps resized to each mask's own resolution. Per defect class: the detection rate; the
    pixel AUROC of its images with the defect-free ones; inside its own images alone (does
    the map find the defect in an image known to be defective), also image by image (the
    median, and how many images rank their defect below the rest); and the pooled pixel AUROC
    without the class's images (the pooled number follows the classes with the largest
    defect areas: this says which class holds it down)."""
    from sklearn.metrics import roc_auc_score

    is_bad = np.array([s.label != good for s in samples])
    if is_bad.all() or not is_bad.any():
        raise DatasetError("the test part needs both defect-free and defect images")
    if len(maps) != len(samples):
        raise ValueError(f"{len(maps)} maps for {len(samples)} images")
    masks = [read_mask(sample) for sample in samples]

    def resized(i: int) -> np.ndarray:
        """Image i's map at its mask's own resolution (made when needed: the test set's maps
        at full size would take more memory than the ranking of their pixels)."""
        amap = maps[i][None, None]
        return F.interpolate(amap, size=masks[i].shape, mode="bilinear", align_corners=False)[
            0, 0
        ].numpy()

    has_pixels = [bool(m.any()) for m in masks]
    indices = range(len(masks))
    ranking = PixelRanking(masks, map(resized, indices)) if any(has_pixels) else None
    # each defect image alone: does its map rank its own defect pixels first
    alone = {
        i: PixelRanking([masks[i]], [resized(i)]).auroc()
        for i in indices
        if has_pixels[i] and not masks[i].all()
    }
    best_f1, best_threshold = f1_max(is_bad, scores)
    at_calibrated = rates_at(is_bad, scores, threshold)
    per_class = {}
    for name in sorted({s.label for s in samples}):
        members = np.array([s.label == name for s in samples])
        per_class[name] = {
            "images": int(members.sum()),
            "flagged": float((scores[members] >= threshold).mean()),
        }
        own = np.flatnonzero(members)
        if name == good or ranking is None or not any(has_pixels[i] for i in own):
            continue
        chosen = np.flatnonzero(members | ~is_bad)
        per_class[name]["defect_pixels"] = int(sum(masks[i].sum() for i in own))
        per_class[name]["pixel_auroc"] = ranking.auroc(chosen)
        if not all(masks[i].all() for i in own):
            per_class[name]["pixel_auroc_within"] = ranking.auroc(own)
        if singles := [alone[i] for i in own if i in alone]:
            per_class[name]["image_pixel_auroc_median"] = float(np.median(singles))
            per_class[name]["images_map_inverted"] = sum(v < 0.5 for v in singles)
        rest = np.flatnonzero(~members)
        if any(has_pixels[i] for i in rest):
            per_class[name]["pixel_auroc_without"] = ranking.auroc(rest)

    def statistic(i: np.ndarray) -> dict[str, float | None]:
        bad = is_bad[i]
        if bad.all() or not bad.any():
            return {}
        rates = rates_at(bad, scores[i], threshold)
        return {
            "image_auroc": float(roc_auc_score(bad, scores[i])),
            "f1_calibrated": rates["ng_f1"],
            "at_calibrated.ng_recall": rates["ng_recall"],
            "at_calibrated.ok_specificity": rates["ok_specificity"],
        }

    return {
        **uncertainty(statistic, len(samples), int(is_bad.sum())),
        "image_auroc": float(roc_auc_score(is_bad, scores)),
        "pixel_auroc": ranking.auroc() if ranking else None,
        "aupro": ranking.aupro() if ranking else None,
        "f1_max": best_f1,
        "f1_max_threshold": best_threshold,
        "f1_calibrated": at_calibrated["ng_f1"],
        "at_calibrated": at_calibrated,
        "per_class": per_class,
        "test_images": len(samples),
    }


def evaluate_bundle(inspector, samples: Sequence[Any], data: str) -> dict[str, Any]:
    """Every image is a test image: the model's good class is OK, any other label a defect;
    masks, where the layout has them, give the pixel metrics."""
    good = inspector.classes[0]
    if not any(s.label == good for s in samples):
        raise ValueError(
            f"{data} has no images labelled {good!r}, the model's defect-free class: "
            "anomaly evaluation needs good and defect images"
        )
    predictions = list(inspector.predict([s.image for s in samples]))
    scores = np.array([p.scores["anomaly_score"] for p in predictions])
    maps = [torch.from_numpy(p.heat_map) for p in predictions]
    result = evaluate_anomaly(samples, good, scores, maps, inspector.threshold)
    return {"images": len(samples), "threshold": inspector.threshold, **result}
