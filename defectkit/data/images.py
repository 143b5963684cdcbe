"""Reading images safely (greyscale or colour alike) and serving them as a torch Dataset."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from defectkit.data.samples import DatasetError, Sample

MAX_PIXELS = 40_000_000  # a 6000 x 6000 line-scan frame passes, a decompression bomb does not

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def open_image(path: Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The fully decoded image as stored, after its header is checked against `max_pixels`.

    A missing, corrupt, truncated or oversized file raises a DatasetError that names it,
    says why and what to do: the one message every reader of images gives (train, eval,
    `data inspect`, `predict`, the service)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"no image file {path}: check the path (relative paths are from "
            f"{Path.cwd()}), or remove it from the list of images"
        )
    try:
        with warnings.catch_warnings():  # the size is judged below, against our own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        width, height = image.size
        if width * height > max_pixels:
            image.close()
            raise DatasetError(oversized(path, width, height, max_pixels))
        image.load()
        return image
    except Image.DecompressionBombError as error:  # PIL's own limit, far above ours
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = int(found.group(1)) if found else 0
        raise DatasetError(oversized(path, pixels, None, max_pixels)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(
            f"cannot read image {path} ({error}): the file is corrupt or "
            "truncated; replace it or remove it from the dataset"
        ) from None


def oversized(name: Path | str, width: int, height: int | None, max_pixels: int) -> str:
    """The one message for an image over the pixel limit (`height` None: `width` is the
    pixel count, all PIL's own bomb check tells)."""
    pixels = width if height is None else width * height
    size = f"{pixels / 1e6:.0f} Mpx" if height is None else f"{width} x {height} pixels"
    return (
        f"{name}: its header declares {size}, over the limit of {max_pixels / 1e6:.0f} Mpx "
        "(a decompression bomb or a wrong header); shrink or tile the image, or remove it"
    )


def without_path(message: str, path: Path) -> str:
    """An image error without the leading file name, for places that name the file once."""
    if message.startswith(f"{path}: "):
        return message[len(f"{path}: ") :]
    if message.startswith(f"cannot read image {path} "):
        return "cannot be decoded " + message[len(f"cannot read image {path} ") :]
    return message


def load_image(path: Path) -> Image.Image:
    """An RGB image: greyscale, palette and 16-bit files become 3 channels, so any backbone fits.

    A missing, corrupt, truncated or oversized file raises a DatasetError that names it.
    """
    with open_image(path) as image:
        if image.mode in ("I;16", "I;16B", "I", "F"):
            array = np.asarray(image, dtype=np.float32)
            span = float(array.max() - array.min()) or 1.0
            return Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8)).convert(
                "RGB"
            )
        return image.convert("RGB")


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
