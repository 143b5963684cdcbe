"""Tiling for large images (data.resize = "tile"): the network sees image_size x image_size
windows of the image at its own resolution, so a 3-pixel pin-hole on a 640 px board stays 3
pixels instead of shrinking away in a resize. Training takes one random window per image
(centred on a defect half of the time for images that have one); inference slides
overlapping windows over the whole image and averages where they overlap."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch.nn import functional as F

from defectkit.data.prepare import tile_starts


def pad_to(image: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) padded at the bottom / right to at least size x size, edges replicated."""
    height, width = image.shape[-2:]
    if height >= size and width >= size:
        return image
    padding = (0, max(0, size - width), 0, max(0, size - height))
    return F.pad(image[None].float(), padding, mode="replicate")[0].to(image.dtype)


def split_tiles(image: torch.Tensor, size: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(C, H, W) -> (N, C, size, size) overlapping windows and their (top, left)."""
    padded = pad_to(image, size)
    height, width = padded.shape[-2:]
    origins = [(t, s) for t in tile_starts(height, size) for s in tile_starts(width, size)]
    tiles = torch.stack([padded[:, t : t + size, s : s + size] for t, s in origins])
    return tiles, origins


def stitch(
    tiles: torch.Tensor, origins: list[tuple[int, int]], height: int, width: int
) -> torch.Tensor:
    """(N, size, size) window outputs -> (height, width), averaged where windows overlap."""
    size = tiles.shape[-1]
    full_h, full_w = max(height, size), max(width, size)
    total = torch.zeros(full_h, full_w, dtype=torch.float32)
    count = torch.zeros(full_h, full_w, dtype=torch.float32)
    for tile, (top, left) in zip(tiles, origins, strict=True):
        total[top : top + size, left : left + size] += tile.float()
        count[top : top + size, left : left + size] += 1
    return (total / count)[:height, :width]


def slide(
    image: torch.Tensor, size: int, run: Callable, batch_size: int = 16
) -> tuple[torch.Tensor, float]:
    """Overlapping windows of image (C, H, W) through `run` (a window batch -> defect
    probabilities (N, size, size) and gate NG probabilities (N,), tensors or arrays): the
    probabilities stitched to (H, W) and the most confident window's gate."""
    tiles, origins = split_tiles(image, size)
    outputs = [run(chunk) for chunk in tiles.split(batch_size)]
    probability = torch.cat([torch.as_tensor(masks) for masks, _ in outputs]).float()
    gate = float(torch.cat([torch.as_tensor(gates).reshape(-1) for _, gates in outputs]).max())
    return stitch(probability, origins, *image.shape[-2:]), gate


def random_window(
    image: torch.Tensor, mask: torch.Tensor, size: int, rng: random.Random, focus: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """A size x size window of image (C, H, W) and mask (H, W), padded when the image is
    smaller: with probability `focus` (and a defect in the mask) one that holds a random
    defect pixel, else anywhere. Defects are often a few hundred pixels of a large image,
    and windows drawn anywhere would mostly show background."""
    height, width = mask.shape
    if height < size or width < size:
        image = pad_to(image, size)
        mask = F.pad(mask, (0, max(0, size - width), 0, max(0, size - height)), value=False)
        height, width = mask.shape
    if mask.any() and rng.random() < focus:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        pick = rng.randrange(len(ys))
        y, x = int(ys[pick]), int(xs[pick])
        top = min(max(0, y - rng.randrange(size)), height - size)
        left = min(max(0, x - rng.randrange(size)), width - size)
    else:
        top, left = rng.randint(0, height - size), rng.randint(0, width - size)
    return (
        image[:, top : top + size, left : left + size],
        mask[top : top + size, left : left + size],
    )
