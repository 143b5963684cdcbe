"""ONNX export. The exported graph is `InspectionGraph`, the very module the torch backend
runs, so both backends compute the same outputs: class probabilities for a classifier; the
smoothed anomaly map and its maximum (the image score) for an anomaly model, with the memory
bank or Gaussians stored inside the graph as constants."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defectkit.bundle import META_FILE, BundleError, load_model
from defectkit.models.backbones import sha256_of
from defectkit.runs import read_json, write_json

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
OPSET = 18
# exported and eager results must agree to this (relative to the value for large raw scores)
TOLERANCE = 1e-4


def output_names(task: str) -> list[str]:
    from defectkit.tasks import get_task

    return list(get_task(task).outputs)


class InspectionGraph(nn.Module):
    """Normalised images (B, C, S, S) -> what a decision needs: the task's own head over the
    model (class probabilities; the smoothed anomaly map and its maximum; pixel and gate
    probabilities). Both backends run it and ONNX export writes it."""

    def __init__(self, model: nn.Module, task: str, size: int, blur_sigma: float = 0.0):
        from defectkit.tasks import get_task

        super().__init__()
        self.model, self.size, self.sigma = model, size, blur_sigma
        self.head = get_task(task).graph

    @classmethod
    def from_meta(cls, model: nn.Module, meta: dict[str, Any]) -> InspectionGraph:
        sigma = meta.get("method_options", {}).get("blur_sigma", 0.0)
        return cls(model, meta["task"], meta["input_size"][0], sigma)

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.head(self.model, images, size=self.size, blur_sigma=self.sigma)


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


def onnx_path(meta: dict[str, Any]) -> Path:
    """The bundle's ONNX file, checked against the checksum recorded at export."""
    record = meta.get("onnx")
    folder = Path(meta["folder"])
    if not record or not (folder / record["file"]).is_file():
        raise BundleError(f"{folder} has no ONNX model: run `defectkit export {folder}` first")
    path = folder / record["file"]
    if sha256_of(path) != record["sha256"]:
        raise BundleError(
            f"{path} does not match the checksum in {folder / META_FILE}: export it again "
            f"with `defectkit export {folder}`"
        )
    return path


def check_export(
    bundle: str | Path,
    images: Sequence[str | Path],
    references: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """Run both backends on the same images (with their references, for models that take
    one): largest score difference (absolute, or relative for scores above 1), and whether
    every OK/NG decision and label agrees. Recorded in bundle.json next to the export."""
    from defectkit.inspect import Inspector

    if not images:
        raise ValueError("give images to check the export on (real images of the task)")
    eager, exported = Inspector(bundle, "torch"), Inspector(bundle, "onnx")
    errors: list[dict[str, str]] = []
    worst, disagree, checked = 0.0, [], 0
    for a, b in zip(
        eager.predict(images, 16, errors, references),
        exported.predict(images, 16, [], references),
        strict=True,
    ):
        checked += 1
        for key, value in a.scores.items():
            worst = max(worst, abs(value - b.scores[key]) / max(1.0, abs(value)))
        if a.label != b.label or a.ok != b.ok:
            disagree.append(a.image)
    result = {
        "images": checked,
        "skipped": len(errors),
        "max_score_difference": worst,
        "decisions_disagree": disagree,
        "tolerance": TOLERANCE,
        "passed": checked > 0 and not disagree and worst <= TOLERANCE,
    }
    record = {**exported.meta["onnx"], "check": result}
    _update_meta(Path(exported.meta["folder"]), {"onnx": record})
    return result
