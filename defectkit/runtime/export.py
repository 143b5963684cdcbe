"""ONNX export and its parity check. The exported graph is `InspectionGraph` (graph.py),
the very module the torch backend runs, so both backends compute the same outputs: class
probabilities for a classifier; the smoothed anomaly map and its maximum (the image score)
for an anomaly model, with the memory bank or Gaussians stored inside the graph as
constants."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from defectkit.bundle import META_FILE, ONNX_FILE
from defectkit.predictions import SCORE_TOLERANCE, box_differences
from defectkit.runs import read_json, sha256_of, write_json
from defectkit.runtime.graph import InspectionGraph, load_model, output_names
from defectkit.runtime.inspector import Inspector
from defectkit.tasks import get_task

log = logging.getLogger(__name__)

OPSET = 18
# exported and eager results must agree to this (relative to the value for large raw scores)
TOLERANCE = SCORE_TOLERANCE


def export_onnx(bundle: str | Path, opset: int = OPSET) -> dict[str, Any]:
    """Write model.onnx (dynamic batch) into the bundle folder and record it, with its
    checksum, in bundle.json. Returns that record."""
    model, meta = load_model(Path(bundle))
    folder = Path(meta["folder"])
    graph = InspectionGraph.from_meta(model, meta).eval()
    size = meta["input_size"]
    channels = meta.get("in_channels", 3)
    example = torch.zeros(2, channels, *size)
    target = folder / ONNX_FILE
    temporary = folder / (ONNX_FILE + ".tmp")
    tick = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (example,),
            str(temporary),
            input_names=["images"],
            output_names=output_names(meta["task"]),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
            opset_version=opset,
            dynamo=True,
            custom_translation_table=get_task(meta["task"]).onnx_translations(),
            external_data=False,
            verbose=False,
        )
    temporary.replace(target)
    record = {
        "file": ONNX_FILE,
        "sha256": sha256_of(target),
        "opset": opset,
        "input": {"images": ["batch", channels, *size]},
        "outputs": output_names(meta["task"]),
        "export_seconds": round(time.perf_counter() - tick, 2),
        "torch": torch.__version__,
    }
    _update_meta(folder, {"onnx": record})
    log.info("exported %s (%.1f MB)", target, target.stat().st_size / 2**20)
    return record


def _update_meta(folder: Path, changes: dict[str, Any]) -> None:
    meta = read_json(folder / META_FILE)
    meta.update(changes)
    write_json(folder / META_FILE, meta)


def check_export(
    bundle: str | Path,
    images: Sequence[str | Path],
    references: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """Run both backends on the same images (with their references, for models that take
    one): largest score difference (absolute, or relative for scores above 1), whether
    every OK/NG decision and label agrees, and for a detector whether both kept the same
    boxes (matched by class, IoU and score, never by position; a box at the score floor, the
    top-k cut or an NMS near-tie may fall either way). Recorded in bundle.json next to the
    export."""
    if not images:
        raise ValueError("give images to check the export on (real images of the task)")
    eager, exported = Inspector(bundle, "torch"), Inspector(bundle, "onnx")
    errors: list[dict[str, str]] = []
    worst, disagree, at_threshold, checked = 0.0, [], [], 0
    other_boxes: list[str] = []
    meta = eager.meta
    cuts = {
        "floor": meta.get("score_floor", 0.0),
        "most": meta.get("max_boxes", 10**9),
        "nms_iou": meta.get("nms_iou", 1.0),
    }
    for a, b in zip(
        eager.predict(images, 16, errors, references),
        exported.predict(images, 16, [], references),
        strict=True,
    ):
        checked += 1
        for key, value in a.scores.items():
            worst = max(worst, abs(value - b.scores[key]) / max(1.0, abs(value)))
        if a.label != b.label or a.ok != b.ok:
            # a score within the tolerance of the threshold may fall either side of it (a
            # threshold chosen on validation scores sits exactly on one of them)
            tie = a.ng_score is not None and a.threshold is not None
            tie = tie and abs(a.ng_score - a.threshold) <= TOLERANCE * max(1.0, abs(a.threshold))
            (at_threshold if tie else disagree).append(a.image)
        if a.boxes or b.boxes:
            only_a, only_b = box_differences(a.boxes, b.boxes, **cuts)
            if only_a or only_b:
                other_boxes.append(a.image)
    result = {
        "images": checked,
        "skipped": len(errors),
        "max_score_difference": worst,
        "decisions_disagree": disagree,
        "ties_at_threshold": at_threshold,
        "boxes_disagree": other_boxes,
        "tolerance": TOLERANCE,
        "passed": checked > 0 and not disagree and not other_boxes and worst <= TOLERANCE,
    }
    record = {**exported.meta["onnx"], "check": result}
    _update_meta(Path(exported.meta["folder"]), {"onnx": record})
    return result
