"""What the runtime asks of the detect task: its bundle's model, the inference graph's head
(the kept detections of a batch: boxes decoded, top-k, NMS within each class, score floor
and the most boxes an image keeps, all inside the graph that ONNX exports), the decision per
image (boxes back in the image's pixels, scores calibrated to each class's threshold, NG when
a box reaches the threshold), `eval` against labelled boxes, and the command line's
summaries. Deciding needs numpy alone: an Inspector on the ONNX backend never imports torch
for a detector."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from defectkit.bundle import load_weights, write_bundle
from defectkit.config import RunConfig
from defectkit.data.prepare import boxes_to_image, class_nms, split_windows
from defectkit.predictions import Prediction, decide_detect

if TYPE_CHECKING:
    import torch
    from torch import nn

    from defectkit.models.backbones import Preprocessing

# the batch's detections, flat: each one's image in the batch (M,), boxes (M, 4) in input
# pixels, scores (M,), class index (M,); ordered by image, then score
OUTPUTS = ("batch_index", "boxes", "scores", "labels")

# the config sections this task reads (its report and `config show` list these)
SECTIONS = ("data", "split", "model", "train", "eval", "detect")


def save_bundle(
    folder: Path,
    model: nn.Module,
    config: RunConfig,
    prep: Preprocessing,
    classes: list[str],
    threshold: float,
    in_channels: int,
    box_thresholds: dict[str, float],
) -> Any:
    dc = config.detect
    return write_bundle(
        folder,
        model,
        config,
        prep,
        {
            "task": "detect",
            "arch": dc.arch,
            # FCOS's training assignment; line models also give box distances by softplus
            "assign": dc.assign,
            "fpn_channels": dc.fpn_channels,
            "head_convs": dc.head_convs,
            "anchor_sizes": list(dc.anchor_sizes),
            "in_channels": in_channels,
            "reference": in_channels == 6,
            "classes": classes,
            # each class's box threshold on the model's own scores (chosen on validation);
            # decisions show box scores calibrated so that these land on 0.5
            "box_thresholds": box_thresholds,
            # NG when a calibrated box score is at or above this (0.5: a box at its class's
            # threshold; eval's rule on validation images where they hold OK and NG ones)
            "threshold": threshold,
            "score_floor": dc.score_floor,
            "nms_iou": dc.nms_iou,
            "max_boxes": dc.max_boxes,
            # test-time augmentation: the graph pools the boxes of these views (eval.tta)
            "tta": config.eval.tta,
            "tta_merge": dc.tta_merge,  # how the views' boxes become one (detect.tta_merge)
            "match_iou": dc.match_iou,
        },
    )


def load_model(folder: Path, meta: dict[str, Any]) -> nn.Module:
    from defectkit.config import DetectConfig, ModelConfig
    from defectkit.models.detector import build_detector

    config = DetectConfig(
        arch=meta["arch"],
        assign=meta.get("assign", "centre"),
        fpn_channels=meta["fpn_channels"],
        head_convs=meta["head_convs"],
        anchor_sizes=tuple(meta["anchor_sizes"]),
    )
    model, _, _ = build_detector(
        ModelConfig(backbone=meta["backbone"]),
        config,
        len(meta["classes"]),
        meta["input_size"][0],
        meta["in_channels"],
        pretrained=False,
    )
    model.load_state_dict(load_weights(meta))
    return model.eval()


def graph(
    model: nn.Module,
    images: torch.Tensor,
    *,
    score_floor: float,
    nms_iou: float,
    max_boxes: int,
    views: int = 1,
    merge: str = "nms",
    **options: Any,
) -> tuple[torch.Tensor, ...]:
    from defectkit.models.detector import TOP_K, select_boxes

    dense = viewed_outputs(model, images, views)
    return select_boxes(*dense, score_floor, nms_iou, max_boxes, TOP_K, views, merge)


def viewed_outputs(
    model: nn.Module, images: torch.Tensor, views: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """dense_outputs over `views` flips / turns of each image (eval.tta; data.transforms'
    view numbering), in one batch: each view's boxes mapped back to the image, every view's
    candidates side by side, (B, views x N, 4) and (B, views x N, K), for NMS to pool (a
    defect several views find is kept once, at its best score)."""
    import torch

    from defectkit.data.transforms import view
    from defectkit.models.detector import dense_outputs

    if views == 1:
        return dense_outputs(model, images)
    size = images.shape[-1]
    boxes, scores = dense_outputs(model, torch.cat([view(images, j) for j in range(views)]))
    # (views x B, N, .) -> (views, B, N, .), reshaped without naming the batch (ONNX keeps
    # it dynamic)
    boxes = boxes.reshape(views, -1, *boxes.shape[1:])
    scores = scores.reshape(views, -1, *scores.shape[1:])
    back = torch.stack([unview_boxes(boxes[j], j, size) for j in range(views)], 1)
    every = scores.transpose(0, 1)
    return back.flatten(1, 2), every.flatten(1, 2)


def unview_boxes(boxes: torch.Tensor, j: int, size: int) -> torch.Tensor:
    """(..., 4) boxes found on view j of a size x size input -> the same boxes on the input:
    view's steps undone in reverse (the transpose, then the flips)."""
    import torch

    x1, y1, x2, y2 = boxes.unbind(-1)
    if j & 4:
        x1, y1, x2, y2 = y1, x1, y2, x2
    if j & 2:
        y1, y2 = size - y2, size - y1
    if j & 1:
        x1, x2 = size - x2, size - x1
    return torch.stack([x1, y1, x2, y2], -1)


def graph_options(meta: dict[str, Any]) -> dict[str, Any]:
    options = {k: meta[k] for k in ("score_floor", "nms_iou", "max_boxes")}
    return {**options, "merge": meta.get("tta_merge", "nms")}  # bundles before tta_merge: nms


def onnx_translations() -> dict:
    from defectkit.models.detector import ONNX_TRANSLATIONS

    return ONNX_TRANSLATIONS


def per_image(outputs: Sequence[Any], count: int) -> list[tuple[np.ndarray, ...]]:
    """The graph's flat detections of a batch of `count` images -> (boxes, scores, class
    indices) of each image."""
    images, boxes, scores, labels = (np.asarray(output) for output in outputs)
    images, labels = images.astype(np.int64), labels.astype(np.int64)
    return [(boxes[images == i], scores[images == i], labels[images == i]) for i in range(count)]


def class_thresholds(meta: dict[str, Any]) -> list[float] | None:
    """The bundle's box threshold per class index (None for bundles that kept one threshold
    on the raw scores)."""
    chosen = meta.get("box_thresholds")
    return None if chosen is None else [chosen[c] for c in meta["classes"]]


def tiled_boxes(
    run: Any,
    x: np.ndarray,
    size: int,
    nms_iou: float,
    most: int,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole image (C, H, W) as overlapping size x size windows through `run` (the graph:
    a window batch -> its kept detections): each window's boxes moved to the image, then NMS
    within each class across the windows (a defect on a seam is seen twice), the `most`
    best, clipped to the image. SAHI's slicing, with the graph's own box rules."""
    height, width = x.shape[-2:]
    windows, origins = split_windows(np.asarray(x, dtype=np.float32), size)
    found: list[tuple[np.ndarray, ...]] = []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        for (boxes, scores, labels), (top, left) in zip(
            per_image(run(chunk), len(chunk)), origins[start : start + batch_size], strict=True
        ):
            found.append((boxes + np.array([left, top, left, top], boxes.dtype), scores, labels))
    boxes = np.concatenate([f[0] for f in found]).astype(np.float32).reshape(-1, 4)
    scores = np.concatenate([f[1] for f in found]).astype(np.float32)
    labels = np.concatenate([f[2] for f in found]).astype(np.int64)
    keep = class_nms(boxes, scores, labels, nms_iou)[:most]
    limits = np.array([width, height, width, height], dtype=np.float32)
    return np.minimum(np.maximum(boxes[keep], 0), limits), scores[keep], labels[keep]


def tiled(inspector, name: str, x: np.ndarray, image: Any) -> Prediction:
    """A detector trained on windows (data.resize=tile): its boxes over the whole image."""
    meta = inspector.meta
    boxes, scores, labels = tiled_boxes(
        inspector.run_graph, x, inspector.size, meta["nms_iou"], meta["max_boxes"]
    )
    return decide_detect(
        name,
        boxes,
        scores,
        labels,
        inspector.classes,
        inspector.threshold,
        class_thresholds(meta),
    )


def decide(inspector, names: Sequence[str], outputs: list, images: Sequence[Any]) -> list:
    cuts = class_thresholds(inspector.meta)
    decisions: list[Prediction] = []
    for name, (boxes, scores, labels), image in zip(
        names, per_image(outputs, len(names)), images, strict=True
    ):
        in_image = boxes_to_image(
            boxes, image.height, image.width, inspector.size, inspector.resize
        )
        decisions.append(
            decide_detect(
                name,
                in_image,
                scores,
                labels,
                inspector.classes,
                inspector.threshold,
                cuts,
            )
        )
    return decisions


def score_names(meta: dict[str, Any]) -> list[str]:
    return list(meta["classes"])


def _maybe(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary(result: dict[str, Any]) -> str:
    return (
        f"mAP@0.5 {result['map_50']:.4f}  mAP@0.5:0.95 {result['map']:.4f}  box recall "
        f"{_maybe(result['box_recall'])}  box precision {_maybe(result.get('box_precision'))}"
        f" ({result['images']} test images, box thresholds by {result.get('box_rule', 'f1')})"
        + f"\ntraining {result['train_seconds']:.1f} s, {result['ms_per_image']:.1f} ms per "
        f"image, peak memory {result['peak_rss_mb']:.0f} MB"
    )


def eval_summary(result: dict[str, Any]) -> str:
    return (
        f"mAP@0.5 {result['map_50']:.4f}  mAP@0.5:0.95 {result['map']:.4f}  box recall "
        f"{_maybe(result['box_recall'])}  box precision {_maybe(result.get('box_precision'))}"
        f"  NG recall {_maybe(result['ng_recall'])}  "
        f"OK specificity {_maybe(result['ok_specificity'])} on {result['images']} images"
    )


# operators may draw the defect's boxes; their answers export as a box dataset
ANSWERS_LOCATE = True


def truth(sample: Any, classes: Sequence[str]) -> str:
    """NG for an image with a labelled box."""
    return "NG" if sample.boxes else "OK"
