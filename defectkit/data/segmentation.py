"""Images with their defect masks for the segment task: masks from mask files or filled
boxes, an aligned reference image stacked as extra channels, resize or pad with the mask
kept aligned, and mask-aware augmentation."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.nn import functional as F
from torch.utils.data import Dataset

from defectkit.data.prepare import content_box
from defectkit.data.samples import DatasetError, Sample
from defectkit.data.tensors import image_tensor, require_references, with_reference
from defectkit.data.tiles import random_window


def read_mask(sample: Sample) -> np.ndarray:
    """The defect mask at the image's own size: a mask file (value > 127 is defect; masks
    carry JPEG-like noise), else the sample's polygons and boxes filled, else empty (size
    read from the image header)."""
    if sample.mask is not None:
        try:
            with Image.open(sample.mask) as mask:
                return np.asarray(mask.convert("L")) > 127
        except OSError as error:
            raise DatasetError(
                f"cannot read mask {sample.mask} of {sample.image} ({error}): replace it, or "
                "remove the image from the dataset"
            ) from None
    with Image.open(sample.image) as image:
        size = image.size
    drawn = Image.new("1", size)
    pen = ImageDraw.Draw(drawn)
    for box in sample.boxes:
        if len(box.polygon) >= 3:
            pen.polygon(list(box.polygon), fill=1)
    mask = np.asarray(drawn, dtype=bool).copy()
    for box in sample.boxes:
        if len(box.polygon) < 3:
            mask[int(box.y1) : int(np.ceil(box.y2)), int(box.x1) : int(np.ceil(box.x2))] = True
    return mask


def resize_pair(
    image: torch.Tensor, mask: torch.Tensor | None, size: int, resize: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float image (C, H, W) and mask (H, W) -> size x size, aligned: "squash" scales both
    to the square; "pad" keeps the aspect ratio, replicates the image's edges and pads the
    mask with background."""
    top, left, h, w = content_box(*image.shape[-2:], size, resize)
    image = F.interpolate(image[None], size=(h, w), mode="bilinear", antialias=True)[0]
    if mask is not None:
        mask = F.interpolate(mask[None, None].float(), size=(h, w), mode="bilinear")[0, 0] > 0.5
    if (h, w) != (size, size):
        padding = (left, size - w - left, top, size - h - top)
        image = F.pad(image[None], padding, mode="replicate")[0]
        if mask is not None:
            mask = F.pad(mask, padding, value=False)
    return image, mask


class SegmentationDataset(Dataset):
    """Samples -> (input (C, S, S) normalised, mask (S, S) float, NG 0/1). C is 3, or 6 with
    the reference stacked after the image. Decoded images are kept in RAM when asked.
    resize="tile": items are S x S windows at the image's own resolution (NG: the window
    holds a defect); `full` gives whole images to slide windows over."""

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        resize: str = "squash",
        reference: bool = False,
        augment: bool = False,
        cache: bool = True,
        seed: int = 0,
    ):
        self.samples, self.size, self.resize = list(samples), size, resize
        self.tiled = resize == "tile"
        self.reference, self.augment = reference, augment
        channels = 6 if reference else 3
        self.mean = torch.tensor(list(mean) * (channels // 3))[:, None, None]
        self.std = torch.tensor(list(std) * (channels // 3))[:, None, None]
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None
        self.rng = random.Random(seed)
        if reference:
            require_references(self.samples, "segment.reference")

    def __len__(self) -> int:
        return len(self.samples)

    def is_ng(self) -> list[bool]:
        """Whether each image holds a defect, read from its mask or boxes."""
        return [bool(self.raw(i)[1].any()) for i in range(len(self))]

    def mask(self, i: int) -> np.ndarray:
        """The true mask at the image's own size (decoded once when caching)."""
        return self.raw(i)[1].numpy()

    def raw(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 image, with the reference stacked when used; bool mask) at full size."""
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        sample = self.samples[i]
        image = image_tensor(sample.image)
        if self.reference:
            image = with_reference(sample, image)
        mask = torch.from_numpy(read_mask(sample))
        if mask.shape != image.shape[1:]:
            raise DatasetError(
                f"the mask of {sample.image} is {tuple(mask.shape)} pixels, the image "
                f"{tuple(image.shape[1:])}: masks must match their images"
            )
        if self.cache is not None:
            self.cache[i] = (image, mask)
        return image, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, mask = self.raw(i)
        if self.tiled:
            x, y = random_window(image.float() / 255, mask, self.size, self.rng)
        else:
            x, y = resize_pair(image.float() / 255, mask, self.size, self.resize)
        assert y is not None
        if self.augment:
            x, y = self._augment(x, y)
        x = (x - self.mean) / self.std
        return x, y.float(), torch.tensor(float((y if self.tiled else mask).any()))

    def full(self, i: int) -> torch.Tensor:
        """The whole image (and reference) normalised at its own size, (C, H, W)."""
        return (self.raw(i)[0].float() / 255 - self.mean) / self.std

    def _augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flips and quarter turns move image, reference and mask together; brightness,
        contrast and blur touch the pixels only."""
        rng = self.rng
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if rng.random() < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        turns = rng.randrange(4)
        if turns:
            x, y = torch.rot90(x, turns, (-2, -1)), torch.rot90(y, turns, (-2, -1))
        gain, shift = 1 + rng.uniform(-0.2, 0.2), rng.uniform(-0.1, 0.1)
        x = ((x - 0.5) * gain + 0.5 + shift).clamp(0, 1)
        if rng.random() < 0.2:
            kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
            weight = (kernel[:, None] * kernel[None, :]).expand(x.shape[0], 1, 3, 3)
            padded = F.pad(x[None], (1, 1, 1, 1), mode="replicate")
            x = F.conv2d(padded, weight, groups=x.shape[0])[0]
        return x.contiguous(), y.contiguous()
