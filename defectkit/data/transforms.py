"""Train and eval presets. The backbone's own preprocessing (mean, std, interpolation) drives
normalisation; augmentation stays mild, since defects can hinge on fine texture."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2 as T

AUGMENT_PRESETS = ("default", "light", "none")


def _interpolation(name: str) -> T.InterpolationMode:
    return T.InterpolationMode.BICUBIC if name == "bicubic" else T.InterpolationMode.BILINEAR


def eval_transform(
    *, size: int, mean: Sequence[float], std: Sequence[float], interpolation: str = "bilinear"
) -> T.Compose:
    """Resize the whole image to size x size (no crop: a defect may sit at the border)."""
    return T.Compose(
        [
            T.Resize((size, size), interpolation=_interpolation(interpolation), antialias=True),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def train_transform(
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
    preset: str = "default",
) -> T.Compose:
    """`default`: random resized crop, flips, small rotations, brightness/contrast, blur;
    `light`: flips only; `none`: the eval transform."""
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; use one of {AUGMENT_PRESETS}")
    if preset == "none":
        return eval_transform(size=size, mean=mean, std=std, interpolation=interpolation)
    mode = _interpolation(interpolation)
    steps: list[T.Transform]
    if preset == "light":
        steps = [
            T.Resize((size, size), interpolation=mode, antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
        ]
    else:
        steps = [
            T.RandomResizedCrop(
                size, scale=(0.6, 1.0), ratio=(0.8, 1.25), interpolation=mode, antialias=True
            ),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
            T.RandomApply(
                [T.RandomRotation(10, interpolation=T.InterpolationMode.BILINEAR)], p=0.3
            ),
            T.ColorJitter(brightness=0.2, contrast=0.2),
            T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.2),
        ]
    return T.Compose(
        [*steps, T.ToDtype(torch.float32, scale=True), T.Normalize(mean=list(mean), std=list(std))]
    )
