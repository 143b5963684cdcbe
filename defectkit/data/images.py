"""Reading image files safely (greyscale or colour alike), with PIL alone: the training
readers, `data inspect`, the Inspector and the service all open images here (data/tensors.py
turns them into torch tensors and Datasets)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from defectkit.data.samples import DatasetError

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
