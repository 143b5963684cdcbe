"""Images with boxes for the detect task: each image resized (or padded) to the input size
with its boxes moved along, box-aware augmentation (flips, quarter turns, brightness and
contrast), an aligned reference stacked as extra channels, and the way back from input
pixels to the image's own pixels."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from defectkit.data.images import image_tensor
from defectkit.data.samples import DatasetError, Sample
from defectkit.data.transforms import content_box, resize_transform

Target = dict[str, torch.Tensor]


def box_classes(samples: Sequence[Sample]) -> list[str]:
    """The box labels of a dataset, sorted: the detector's classes."""
    return sorted({box.label for sample in samples for box in sample.boxes})


def to_input(boxes: torch.Tensor, height: int, width: int, size: int, resize: str) -> torch.Tensor:
    """(M, 4) x1 y1 x2 y2 boxes in image pixels -> in input pixels (size x size)."""
    top, left, h, w = content_box(height, width, size, resize)
    scale = torch.tensor([w / width, h / height, w / width, h / height])
    return boxes * scale + torch.tensor([left, top, left, top], dtype=boxes.dtype)


def to_image(boxes: torch.Tensor, height: int, width: int, size: int, resize: str) -> torch.Tensor:
    """The inverse of to_input, clipped to the image."""
    top, left, h, w = content_box(height, width, size, resize)
    shifted = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
    scaled = shifted * torch.tensor([width / w, height / h, width / w, height / h])
    limits = torch.tensor([width, height, width, height], dtype=boxes.dtype)
    return torch.minimum(scaled.clamp(min=0), limits)


class DetectionDataset(torch.utils.data.Dataset):
    """Samples -> (input (C, S, S) normalised, {"boxes": (M, 4) float in input pixels,
    "labels": (M,) int64 indices into `classes`}). Images without boxes are OK images
    (the detector learns them as background)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        *,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        resize: str = "squash",
        interpolation: str = "bilinear",
        reference: bool = False,
        augment: bool = False,
        cache: bool = True,
        seed: int = 0,
    ):
        if resize not in ("squash", "pad"):
            raise ValueError(f"detect takes data.resize squash or pad, not {resize!r}")
        self.samples, self.size, self.resize = list(samples), size, resize
        # the Inspector's resize (runtime/inspector.py), so a run scores what the bundle sees
        self.to_size = resize_transform(size, interpolation, resize)
        self.index = {name: i for i, name in enumerate(classes)}
        self.reference, self.augment = reference, augment
        channels = 6 if reference else 3
        self.mean = torch.tensor(list(mean) * (channels // 3))[:, None, None]
        self.std = torch.tensor(list(std) * (channels // 3))[:, None, None]
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None
        self.rng = random.Random(seed)
        unknown = {b.label for s in self.samples for b in s.boxes} - set(self.index)
        if unknown:
            raise DatasetError(
                f"boxes of class(es) {sorted(unknown)} are not among the model's classes "
                f"{list(classes)}: label them with a known class or train on them"
            )
        if reference:
            missing = [s.image for s in self.samples if s.reference is None]
            if missing:
                raise DatasetError(
                    f"detect.reference needs an aligned reference image, but {len(missing)} "
                    f"image(s) have none, e.g. {missing[0]}: use a layout with templates "
                    "(deeppcb)"
                )

    def __len__(self) -> int:
        return len(self.samples)

    def is_ng(self) -> list[bool]:
        return [bool(s.boxes) for s in self.samples]

    def raw(self, i: int) -> torch.Tensor:
        """The uint8 image (with its reference stacked) at its own size."""
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        sample = self.samples[i]
        image = image_tensor(sample.image)
        if self.reference:
            reference = image_tensor(sample.reference)
            if reference.shape != image.shape:
                raise DatasetError(
                    f"{sample.reference} is {tuple(reference.shape[1:])} pixels, "
                    f"{sample.image} is {tuple(image.shape[1:])}: a reference must be aligned "
                    "with its image at the same size"
                )
            image = torch.cat([image, reference])
        if self.cache is not None:
            self.cache[i] = image
        return image

    def target(self, i: int, height: int, width: int) -> Target:
        boxes = self.samples[i].boxes
        xyxy = torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in boxes], dtype=torch.float32)
        xyxy = xyxy.reshape(-1, 4)
        return {
            "boxes": to_input(xyxy, height, width, self.size, self.resize),
            "labels": torch.tensor([self.index[b.label] for b in boxes], dtype=torch.int64),
        }

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        image = self.raw(i)
        target = self.target(i, *image.shape[-2:])
        x = self.to_size(image.float() / 255)
        if self.augment:
            x, target["boxes"] = self._augment(x, target["boxes"])
        return (x - self.mean) / self.std, target

    def _augment(self, x: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flips and quarter turns move the image and its boxes together; brightness and
        contrast touch the pixels only."""
        rng, s = self.rng, float(self.size)
        if rng.random() < 0.5:
            x = x.flip(-1)
            boxes = torch.stack([s - boxes[:, 2], boxes[:, 1], s - boxes[:, 0], boxes[:, 3]], 1)
        if rng.random() < 0.5:
            x = x.flip(-2)
            boxes = torch.stack([boxes[:, 0], s - boxes[:, 3], boxes[:, 2], s - boxes[:, 1]], 1)
        for _ in range(rng.randrange(4)):  # a quarter turn counter-clockwise each
            x = torch.rot90(x, 1, (-2, -1))
            boxes = torch.stack([boxes[:, 1], s - boxes[:, 2], boxes[:, 3], s - boxes[:, 0]], 1)
        gain, shift = 1 + rng.uniform(-0.2, 0.2), rng.uniform(-0.1, 0.1)
        x = ((x - 0.5) * gain + 0.5 + shift).clamp(0, 1)
        return x.contiguous(), boxes.reshape(-1, 4)


def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Images of one size stack; each image keeps its own number of boxes."""
    return torch.stack([x for x, _ in batch]), [t for _, t in batch]
