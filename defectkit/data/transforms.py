"""Train and eval presets. The backbone's own preprocessing (mean, std, interpolation) drives
normalisation; augmentation stays mild, since defects can hinge on fine texture."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from defectkit.data.prepare import RESIZE_MODES, content_box

AUGMENT_PRESETS = ("default", "light", "none")
# views of one image that a surface texture does not tell apart: how many of the eight
# flips and quarter turns (the dihedral group) each name takes, in `view`'s numbering
VIEWS = {"none": 1, "flips": 4, "dihedral": 8}


def _interpolation(name: str) -> T.InterpolationMode:
    return T.InterpolationMode.BICUBIC if name == "bicubic" else T.InterpolationMode.BILINEAR


class ResizePad(torch.nn.Module):
    """Keep the aspect ratio: the longer side to `size`, then replicate the edges into the
    rest of the square (a flat grey border would be a texture of its own)."""

    def __init__(self, size: int, interpolation: T.InterpolationMode):
        super().__init__()
        self.size, self.interpolation = size, interpolation

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        top, left, h, w = content_box(*image.shape[-2:], self.size, "pad")
        inner = TF.resize(image, [h, w], interpolation=self.interpolation, antialias=True)
        padding = (left, self.size - w - left, top, self.size - h - top)
        return F.pad(inner[None].float(), padding, mode="replicate")[0].to(image.dtype)


def require_whole_images(resize: str, task: str) -> None:
    """Classify and anomaly models see each image whole: tiling is for the segment task."""
    if resize == "tile":
        raise ValueError(
            f"data.resize=tile cuts windows for the segment task; the {task} task sees whole "
            "images: use data.resize=squash or pad"
        )


def resize_transform(size: int, interpolation: str, resize: str) -> torch.nn.Module:
    """Float images to size x size as data.resize says (tile: left at their own size)."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown data.resize {resize!r}; use one of {RESIZE_MODES}")
    if resize == "pad":
        return ResizePad(size, _interpolation(interpolation))
    if resize == "tile":  # windows of the full-resolution image are cut later
        return torch.nn.Identity()
    return T.Resize((size, size), interpolation=_interpolation(interpolation), antialias=True)


def eval_transform(
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
    resize: str = "squash",
) -> T.Compose:
    """The whole image to size x size (no crop: a defect may sit at the border)."""
    return T.Compose(
        [
            # resized as floats: rounding to uint8 after resizing costs fine texture
            T.ToDtype(torch.float32, scale=True),
            resize_transform(size, interpolation, resize),
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
    resize: str = "squash",
) -> T.Compose:
    """`default`: random resized crop, flips, small rotations, brightness/contrast, blur;
    `light`: flips only; `none`: the eval transform."""
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; use one of {AUGMENT_PRESETS}")
    if preset == "none":
        return eval_transform(
            size=size, mean=mean, std=std, interpolation=interpolation, resize=resize
        )
    mode = _interpolation(interpolation)
    steps: list[T.Transform]
    if preset == "light":
        steps = [
            resize_transform(size, interpolation, resize),
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


def view(images: torch.Tensor, j: int) -> torch.Tensor:
    """The j-th of the eight flips and quarter turns of (..., H, W) images: bit 0 flips left
    to right, bit 1 top to bottom, bit 2 swaps height and width (with the flips, the turns
    by 90 and 270 degrees). 0..3 are the flips alone."""
    if j & 1:
        images = images.flip(-1)
    if j & 2:
        images = images.flip(-2)
    if j & 4:
        images = images.transpose(-1, -2)
    return images


def to_image_size(
    values: torch.Tensor | np.ndarray, size: tuple[int, int], input_size: int, resize: str
) -> np.ndarray:
    """An input-size map (anomaly scores, defect probabilities) -> the image's own
    (height, width): the image's content cropped out (see content_box), then bilinear."""
    top, left, h, w = content_box(*size, input_size, resize)
    crop = torch.as_tensor(np.ascontiguousarray(values[top : top + h, left : left + w]))
    return F.interpolate(crop[None, None].float(), size=size, mode="bilinear")[0, 0].numpy()


def to_image_mask(
    probability: torch.Tensor, size: tuple[int, int], input_size: int, resize: str, threshold: float
) -> np.ndarray:
    """Input-size probabilities -> a boolean mask at the image's own size."""
    return to_image_size(probability, size, input_size, resize) >= threshold
