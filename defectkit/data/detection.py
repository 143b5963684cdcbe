"""Images with boxes for the detect task: each image resized (or padded) to the input size
with its boxes moved along, or (data.resize=tile) a window of the image at its own
resolution with the boxes it holds, as SAHI does for small objects on large images;
box-aware augmentation (mosaic, scale jitter, flips, quarter turns, brightness and contrast), an
aligned reference stacked as extra channels (the way back from input pixels to the image's
own is data/prepare.py `boxes_to_image`)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from defectkit.data.prepare import content_box
from defectkit.data.samples import DatasetError, Sample
from defectkit.data.tensors import image_tensor, require_references, with_reference
from defectkit.data.tiles import pad_to
from defectkit.data.transforms import resize_transform

Target = dict[str, torch.Tensor]


def box_classes(samples: Sequence[Sample]) -> list[str]:
    """The box labels of a dataset, sorted: the detector's classes."""
    return sorted({box.label for sample in samples for box in sample.boxes})


def to_input(boxes: torch.Tensor, height: int, width: int, size: int, resize: str) -> torch.Tensor:
    """(M, 4) x1 y1 x2 y2 boxes in image pixels -> in input pixels (size x size)."""
    top, left, h, w = content_box(height, width, size, resize)
    scale = torch.tensor([w / width, h / height, w / width, h / height])
    return boxes * scale + torch.tensor([left, top, left, top], dtype=boxes.dtype)


def clip_boxes(
    moved: torch.Tensor,
    labels: torch.Tensor,
    low: tuple[float, float],
    high: tuple[float, float],
    min_share: float,
    min_side: float = 0.0,
) -> Target:
    """Boxes already moved into a rectangle's pixels (low: its left, top; high: its right,
    bottom), clipped to it and kept where at least `min_share` of a box's area and more
    than `min_side` pixels a side are left (a window, a zoom, a mosaic cell)."""
    lo = torch.tensor([*low, *low], dtype=moved.dtype)
    hi = torch.tensor([*high, *high], dtype=moved.dtype)
    clipped = torch.maximum(torch.minimum(moved, hi), lo)
    wide, tall = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
    keep = (wide > min_side) & (tall > min_side) & (wide * tall >= min_share * area.clamp(min=1e-6))
    return {"boxes": clipped[keep].reshape(-1, 4), "labels": labels[keep]}


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
        scale_jitter: float = 0.0,
        mosaic: float = 0.0,
        cache: bool = True,
        seed: int = 0,
    ):
        if resize not in ("squash", "pad", "tile"):
            raise ValueError(f"detect takes data.resize squash, pad or tile, not {resize!r}")
        self.samples, self.size, self.resize = list(samples), size, resize
        # the Inspector's resize (runtime/inspector.py), so a run scores what the bundle sees
        self.to_size = resize_transform(size, interpolation, resize)
        self.index = {name: i for i, name in enumerate(classes)}
        self.reference, self.augment, self.scale_jitter = reference, augment, scale_jitter
        self.mosaic = mosaic  # the share of training inputs made of four images (detect.mosaic)
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
            require_references(self.samples, "detect.reference")

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
            image = with_reference(sample, image)
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

    def full(self, i: int) -> torch.Tensor:
        """The whole image (and reference) normalised at its own size, (C, H, W): what
        tiled inference slides its windows over."""
        return (self.raw(i).float() / 255 - self.mean) / self.std

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        if self.augment and self.mosaic and self.rng.random() < self.mosaic:
            x, target = self._mosaic(i)
        else:
            x, target = self._input(i)
        if self.augment:
            if self.scale_jitter and self.rng.random() < 0.5:
                x, target = self._zoom(x, target)
            x, target["boxes"] = self._augment(x, target["boxes"])
        return (x - self.mean) / self.std, target

    def _input(self, i: int) -> tuple[torch.Tensor, Target]:
        """Image i as the model takes it, in [0, 1]: resized, or a window of it (tile)."""
        image = self.raw(i)
        if self.resize == "tile":
            return self._window(i, image)
        return self.to_size(image.float() / 255), self.target(i, *image.shape[-2:])

    def _mosaic(self, i: int) -> tuple[torch.Tensor, Target]:
        """YOLOv4's mosaic at the input's own scale: the input cut into four rectangles at
        a random point (a quarter to three quarters of the way across and down), each
        filled with a random crop of image i or of three other random training images, at
        the scale each would have alone; the boxes along, clipped to their rectangle and
        kept where at least a tenth of a box and 2 pixels a side are left (YOLOv5's box
        candidates). More defects and backgrounds per input, and defects cut at edges."""
        size, rng = self.size, self.rng
        cx, cy = (round(size * rng.uniform(0.25, 0.75)) for _ in range(2))
        cells = [(0, 0, cx, cy), (cx, 0, size, cy), (0, cy, cx, size), (cx, cy, size, size)]
        sources = [i] + [rng.randrange(len(self)) for _ in range(3)]
        canvas, boxes, labels = None, [], []
        for source, (x0, y0, x1, y1) in zip(sources, cells, strict=True):
            x, target = self._input(source)
            if canvas is None:
                canvas = torch.zeros_like(x)
            left, top = rng.randint(0, size - (x1 - x0)), rng.randint(0, size - (y1 - y0))
            canvas[:, y0:y1, x0:x1] = x[:, top : top + y1 - y0, left : left + x1 - x0]
            moved = target["boxes"] + torch.tensor([x0 - left, y0 - top] * 2, dtype=torch.float32)
            cell = clip_boxes(moved, target["labels"], (x0, y0), (x1, y1), 0.1, min_side=2)
            boxes.append(cell["boxes"])
            labels.append(cell["labels"])
        return canvas, {"boxes": torch.cat(boxes).reshape(-1, 4), "labels": torch.cat(labels)}

    def _window(self, i: int, image: torch.Tensor) -> tuple[torch.Tensor, Target]:
        """A size x size window at the image's own resolution (padded when smaller): half
        of the time, for an image with boxes, one holding a random box; its boxes shifted
        into it, clipped, and kept where at least half of a box is inside."""
        target = self.target(i, *image.shape[-2:])
        image = pad_to(image, self.size)
        height, width = image.shape[-2:]
        top = self.rng.randint(0, height - self.size)
        left = self.rng.randint(0, width - self.size)
        boxes = target["boxes"]
        if len(boxes) and self.rng.random() < 0.5:
            x1, y1, x2, y2 = boxes[self.rng.randrange(len(boxes))].tolist()
            left = _start_around(x1, x2, width, self.size, self.rng)
            top = _start_around(y1, y2, height, self.size, self.rng)
        window = image[:, top : top + self.size, left : left + self.size].float() / 255
        shifted = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
        return window, clip_boxes(shifted, target["labels"], (0, 0), (self.size,) * 2, 0.5)

    def _zoom(self, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        """Scale jitter: the input zoomed by 1 -/+ scale_jitter about a random point, cropped
        (in) or edge-padded (out) back to size x size, the boxes along; a box left with less
        than half of its area is dropped."""
        size, jitter = self.size, self.scale_jitter
        scaled = max(8, round(size * self.rng.uniform(1 - jitter, 1 + jitter)))
        z = scaled / size
        x = torch.nn.functional.interpolate(
            x[None], size=(scaled, scaled), mode="bilinear", antialias=True
        )[0]
        if scaled >= size:
            top, left = self.rng.randint(0, scaled - size), self.rng.randint(0, scaled - size)
            x = x[:, top : top + size, left : left + size]
            shift = torch.tensor([-left, -top, -left, -top], dtype=torch.float32)
        else:
            top, left = self.rng.randint(0, size - scaled), self.rng.randint(0, size - scaled)
            padding = (left, size - scaled - left, top, size - scaled - top)
            x = torch.nn.functional.pad(x[None], padding, mode="replicate")[0]
            shift = torch.tensor([left, top, left, top], dtype=torch.float32)
        moved = target["boxes"] * z + shift
        return x.contiguous(), clip_boxes(moved, target["labels"], (0, 0), (size, size), 0.5)

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


def _start_around(low: float, high: float, length: int, size: int, rng: random.Random) -> int:
    """A window start in 0..length-size whose window holds low..high where it fits."""
    earliest = max(0, int(high) - size)
    latest = min(int(low), length - size)
    if earliest > latest:  # the box is larger than a window: a window inside it
        earliest, latest = (
            min(int(low), length - size),
            max(0, min(int(high) - size, length - size)),
        )
        earliest, latest = min(earliest, latest), max(earliest, latest)
    return rng.randint(earliest, latest)


def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Images of one size stack; each image keeps its own number of boxes."""
    return torch.stack([x for x, _ in batch]), [t for _, t in batch]
