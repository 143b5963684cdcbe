"""Anomaly methods learn from defect-free images only. Each is one file holding a plain
nn.Module with `fit(batches)` and `forward(images) -> (image_scores, anomaly_maps)`,
registered by name so that a new method is one new file."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from defectkit.registry import Registry

_METHODS: Registry[Callable[..., nn.Module]] = Registry("anomaly method")


# a sharded fit's gathering step: this process's feature rows -> every process's, in image
# order (engine/distributed.gather_rows under torchrun); one process keeps its own
Gather = Callable[[torch.Tensor], torch.Tensor]


def keep(rows: torch.Tensor) -> torch.Tensor:
    return rows


def register_method(name: str) -> Callable:
    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        return _METHODS.add(name, factory)

    return decorator


def list_methods() -> list[str]:
    _load_builtin()
    return sorted(_METHODS)


def create_method(name: str, **options) -> nn.Module:
    """Build a method from the options it takes; options meant for other methods (the run
    config carries all of them) are left out."""
    _load_builtin()
    factory = _METHODS.lookup(name)
    accepted = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in options.items() if k in accepted})


def smooth_maps(maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Patch grid -> input resolution, then a Gaussian blur (as PatchCore does)."""
    maps = F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)
    if sigma > 0:
        kernel = 2 * math.ceil(3 * sigma) + 1
        maps = TF.gaussian_blur(maps, [kernel, kernel], [sigma, sigma])
    return maps[:, 0]


def _load_builtin() -> None:
    from defectkit.models.anomaly import autoencoder, ensemble, padim, patchcore  # noqa: F401
