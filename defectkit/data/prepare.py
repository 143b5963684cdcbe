"""An image as the network takes it, with numpy and PIL alone: the evaluation preprocessing
(data/transforms.py `eval_transform`: floats, resized as data.resize says, normalised), the
way from input pixels back to the image's own, and the windows of a tiled model. The
Inspector prepares every image here, so a line PC that runs a bundle's ONNX file needs no
torch. PIL resizes 32-bit float images with the same antialiasing kernels (bilinear,
bicubic) that torchvision applies to float tensors: both agree to float rounding (a test
holds them to it)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

RESIZE_MODES = ("squash", "pad", "tile")  # tile: windows at full resolution, data/tiles.py
OVERLAP = 0.25  # of a window's side shared with its neighbour when sliding


def content_box(height: int, width: int, size: int, resize: str) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside the network input (size x size, or
    the image's own size when tiled)."""
    if resize == "tile":
        return 0, 0, height, width
    if resize != "pad":
        return 0, 0, size, size
    scale = size / max(height, width)
    inner_h, inner_w = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - inner_h) // 2, (size - inner_w) // 2, inner_h, inner_w


def prepare_image(
    image: Image.Image,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
    resize: str = "squash",
) -> np.ndarray:
    """An RGB image -> the network's float32 input (3, size, size), or (3, H, W) when tiled:
    scaled to [0, 1], resized as floats (squash: to size x size; pad: the longer side to
    size, edges replicated into the rest), normalised by the backbone's mean and std."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown data.resize {resize!r}; use one of {RESIZE_MODES}")
    rgb = image.convert("RGB")
    width, height = rgb.size
    top, left, inner_h, inner_w = content_box(height, width, size, resize)
    mode = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
    channels = []
    for band in rgb.split():  # each channel as 32-bit floats (0..255), resized as floats
        band = band.convert("F")
        if (inner_h, inner_w) != (height, width):
            band = band.resize((inner_w, inner_h), mode)
        channels.append(np.asarray(band, dtype=np.float32))
    x = np.stack(channels)
    if resize == "pad":
        rest = ((0, 0), (top, size - inner_h - top), (left, size - inner_w - left))
        x = np.pad(x, rest, mode="edge")
    # (x / 255 - mean) / std in one multiply-add (resizing is linear: scaling after it is the
    # same to float rounding)
    std = np.asarray(std, np.float32)
    scale = (1 / (255 * std))[:, None, None]
    shift = (np.asarray(mean, np.float32) / std)[:, None, None]
    return np.ascontiguousarray(x * scale - shift, dtype=np.float32)


def boxes_to_image(
    boxes: np.ndarray, height: int, width: int, size: int, resize: str
) -> np.ndarray:
    """(M, 4) x1 y1 x2 y2 boxes in input pixels -> in the image's own, clipped to it."""
    top, left, h, w = content_box(height, width, size, resize)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    shifted = boxes - np.array([left, top, left, top], np.float32)
    scaled = shifted * np.array([width / w, height / h, width / w, height / h], np.float32)
    return np.minimum(np.maximum(scaled, 0), np.array([width, height, width, height], np.float32))


def tile_starts(length: int, size: int, overlap: float = OVERLAP) -> list[int]:
    """Window starts covering 0..length with windows of `size` (the last one flush with the
    end); one window at 0 when the image is no longer than a window."""
    if length <= size:
        return [0]
    stride = max(1, int(size * (1 - overlap)))
    return [*range(0, length - size, stride), length - size]


def split_windows(image: np.ndarray, size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(C, H, W) -> (N, C, size, size) overlapping windows and their (top, left); an image
    smaller than a window is first padded at the bottom / right, edges replicated."""
    height, width = image.shape[-2:]
    rest = ((0, 0), (0, max(0, size - height)), (0, max(0, size - width)))
    padded = np.pad(image, rest, mode="edge")
    height, width = padded.shape[-2:]
    origins = [(t, s) for t in tile_starts(height, size) for s in tile_starts(width, size)]
    windows = np.stack([padded[:, t : t + size, s : s + size] for t, s in origins])
    return windows, origins


def class_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression within each class: the indices kept, best score
    first (torchvision's batched_nms, in numpy)."""
    order = np.argsort(-scores, kind="stable")
    boxes, labels = boxes[order], labels[order]
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    suppressed = np.zeros(len(order), dtype=bool)
    for i in range(len(order)):
        if suppressed[i]:
            continue
        rest = np.arange(i + 1, len(order))
        rest = rest[~suppressed[rest] & (labels[rest] == labels[i])]
        if not len(rest):
            continue
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = (rb - lt).clip(0).prod(axis=1)
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        suppressed[rest[overlap > iou]] = True
    return order[~suppressed]
