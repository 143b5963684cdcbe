"""What the runtime asks of the segment task: its bundle's model, the inference graph's
head (pixel and OK/NG-gate probabilities), the decision per image (the gate, the gated mask
and its regions at the image's own size), `eval` against masks or boxes, and the command
line's summaries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defectkit.bundle import load_weights, write_bundle
from defectkit.config import RunConfig
from defectkit.data.segmentation import read_mask
from defectkit.data.tiles import slide
from defectkit.data.transforms import to_image_size
from defectkit.models.backbones import Preprocessing
from defectkit.predictions import Prediction, decide_segment

OUTPUTS = ("masks", "gate")

# the config sections this task reads (its report and `config show` list these)
SECTIONS = ("data", "split", "model", "train", "eval", "segment")


def save_bundle(
    folder: Path,
    model: nn.Module,
    config: RunConfig,
    prep: Preprocessing,
    in_channels: int,
    gate_threshold: float,
) -> Any:
    sc = config.segment
    return write_bundle(
        folder,
        model,
        config,
        prep,
        {
            "task": "segment",
            "arch": sc.arch,
            "encoder_depth": sc.encoder_depth,
            "decoder_channels": list(sc.decoder_channels),
            "in_channels": in_channels,
            # the input is the image, then its aligned defect-free reference (3 + 3 channels)
            "reference": sc.reference,
            "gate": sc.gate,
            "classes": ["ok", "defect"],
            # gate: NG probability at or above this keeps the mask; below, the mask is empty
            "threshold": gate_threshold if sc.gate else None,
            "mask_threshold": sc.mask_threshold,
            "min_region": sc.min_region,
        },
    )


def load_model(folder: Path, meta: dict[str, Any]) -> nn.Module:
    from defectkit.config import ModelConfig, SegmentConfig
    from defectkit.models.segmenter import build_segmenter

    config = SegmentConfig(
        arch=meta["arch"],
        encoder_depth=meta["encoder_depth"],
        decoder_channels=tuple(meta["decoder_channels"]),
        gate=meta["gate"],
        grad_checkpointing=False,  # inference keeps no activations for a backward pass
    )
    model, _, _ = build_segmenter(
        ModelConfig(backbone=meta["backbone"]), config, meta["in_channels"], pretrained=False
    )
    model.load_state_dict(load_weights(meta))
    return model.eval()


def graph(
    model: nn.Module, images: torch.Tensor, **options: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    masks, gate = model(images)
    return masks.float().sigmoid(), gate.float().sigmoid()


def decide(inspector, names: Sequence[str], outputs: list, images: Sequence[Any]) -> list:
    """Input-size probabilities cropped to each image's content and resized to its size,
    then the mask and OK/NG call of predictions.decide_segment. (Tiled models give the
    whole image's probabilities already: see Inspector._tiled.)"""
    meta = inspector.meta
    decisions: list[Prediction] = []
    for name, probability, gate, image in zip(names, *outputs, images, strict=True):
        full = to_image_size(
            probability, (image.height, image.width), inspector.size, inspector.resize
        )
        decisions.append(
            decide_segment(
                name,
                full,
                float(gate),
                inspector.threshold if meta["gate"] else None,
                meta["mask_threshold"],
                meta["min_region"],
            )
        )
    return decisions


def tiled(inspector, name: str, x: np.ndarray, image: Any) -> Prediction:
    """A segmenter trained on windows: overlapping windows over the whole image, their
    probabilities averaged, the gate the most confident window's."""
    probability, gate = slide(torch.from_numpy(x), inspector.size, inspector.run_graph, 16)
    # the probabilities cover the whole image (content_box is the image when tiled)
    outputs = [probability.numpy()[None], np.array([gate], dtype=np.float32)]
    return decide(inspector, [name], outputs, [image])[0]


def score_names(meta: dict[str, Any]) -> list[str]:
    return ["defect", "gate"]


def _maybe(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary(result: dict[str, Any]) -> str:
    return (
        f"defect IoU {result['defect_iou']:.4f}  Dice {result['dice']:.4f}  mIoU "
        f"{result['miou']:.4f}  ({result['test_images']} test images"
        + (", with the OK/NG gate)" if "gate" in result else ")")
        + f"\ntraining {result['train_seconds']:.1f} s, {result['ms_per_image']:.1f} ms per "
        f"image, peak memory {result['peak_rss_mb']:.0f} MB"
    )


def eval_summary(result: dict[str, Any]) -> str:
    return (
        f"defect IoU {result['defect_iou']:.4f}  mIoU {result['miou']:.4f}  "
        f"NG recall {_maybe(result['ng_recall'])}  OK specificity "
        f"{_maybe(result['ok_specificity'])}  region recall {_maybe(result['region_recall'])}"
        f" on {result['images']} images"
    )


# operators may draw the defect's place; their answers export as boxes
ANSWERS_LOCATE = True


def truth(sample: Any, classes: Sequence[str]) -> str:
    """NG for an image whose mask marks a defect pixel."""
    return "NG" if read_mask(sample).any() else "OK"
