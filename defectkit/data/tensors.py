"""Images as torch tensors: a file's uint8 tensor, an image with its aligned reference
stacked after it, and the classify task's Dataset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from defectkit.data.images import load_image
from defectkit.data.samples import DatasetError, Sample


def image_tensor(path: Path) -> torch.Tensor:
    """uint8 CHW tensor of the RGB image."""
    return F.pil_to_tensor(load_image(path))


class ImageDataset(Dataset):
    """Samples -> (image tensor, class index). Decoded images can be kept in RAM: on a small
    CPU box decoding costs more than augmenting."""

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        transform: Callable[[torch.Tensor], torch.Tensor],
        cache: bool = False,
    ):
        self.samples = list(samples)
        self.index = {name: i for i, name in enumerate(classes)}
        unknown = {s.label for s in self.samples} - set(self.index)
        if unknown:
            raise DatasetError(
                f"labels {sorted(map(str, unknown))} are not among the model's "
                f"classes {list(classes)}"
            )
        self.transform = transform
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def raw(self, i: int) -> torch.Tensor:
        if self.cache is None:
            return image_tensor(self.samples[i].image)
        if i not in self.cache:
            self.cache[i] = image_tensor(self.samples[i].image)
        return self.cache[i]

    def targets(self) -> list[int]:
        return [self.index[s.label] for s in self.samples]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.raw(i)), self.index[self.samples[i].label]


def require_references(samples: Sequence[Sample], setting: str) -> None:
    """A model that takes each image with its aligned reference (`setting`=true) needs one
    for every sample."""
    missing = [s.image for s in samples if s.reference is None]
    if missing:
        raise DatasetError(
            f"{setting}=true but {len(missing)} image(s) have no reference image, e.g. "
            f"{missing[0]}: use a layout with templates (deeppcb) or set {setting}=false"
        )


def with_reference(sample: Sample, image: torch.Tensor) -> torch.Tensor:
    """The uint8 image (C, H, W) with its aligned reference stacked after it (2C, H, W)."""
    reference = image_tensor(sample.reference)
    if reference.shape != image.shape:
        raise DatasetError(
            f"{sample.reference} is {tuple(reference.shape[1:])} pixels, {sample.image} is "
            f"{tuple(image.shape[1:])}: a reference must be aligned with its image at the "
            "same size"
        )
    return torch.cat([image, reference])
