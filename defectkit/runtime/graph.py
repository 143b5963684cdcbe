"""A bundle's model and its inference graph: the model its task builds from the bundle's
weights, `InspectionGraph` (the task's head over the model: what both backends run and ONNX
export writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from defectkit.bundle import BundleError, read_meta
from defectkit.data.transforms import VIEWS
from defectkit.tasks import get_task


def load_model(
    folder: Path, meta: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Whatever task the bundle holds; `meta` from read_meta saves checking the weights'
    checksum a second time."""
    meta = meta or read_meta(folder)
    try:
        task = get_task(meta["task"])
    except ValueError as error:
        raise BundleError(f"{folder}: {error} (a bundle made by a newer defectkit?)") from None
    return task.load_model(folder, meta), meta


def output_names(task: str) -> list[str]:
    return list(get_task(task).outputs)


class InspectionGraph(nn.Module):
    """Normalised images (B, C, S, S) -> what a decision needs: the task's own head over the
    model (class probabilities; the smoothed anomaly map and its maximum; pixel and gate
    probabilities). Both backends run it and ONNX export writes it."""

    def __init__(
        self,
        model: nn.Module,
        task: str,
        size: int,
        blur_sigma: float = 0.0,
        views: int = 1,
        options: dict[str, Any] | None = None,
    ):
        """views: a classifier's test-time augmentation (its bundle's `tta`), 1 = none;
        options: the task's own graph settings from its bundle (a detector's box rules)."""
        super().__init__()
        self.model, self.size, self.sigma, self.views = model, size, blur_sigma, views
        self.options = options or {}
        self.head = get_task(task).graph

    @classmethod
    def from_meta(cls, model: nn.Module, meta: dict[str, Any]) -> InspectionGraph:
        sigma = meta.get("method_options", {}).get("blur_sigma", 0.0)
        tta = meta.get("tta", "none")
        if tta not in VIEWS:
            raise BundleError(
                f"{meta['folder']}: test-time augmentation {tta!r} is not one of "
                f"{sorted(VIEWS)} (a bundle made by a newer defectkit?)"
            )
        views = VIEWS[tta]
        options = get_task(meta["task"]).graph_options(meta)
        return cls(model, meta["task"], meta["input_size"][0], sigma, views, options)

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.head(
            self.model,
            images,
            size=self.size,
            blur_sigma=self.sigma,
            views=self.views,
            **self.options,
        )
