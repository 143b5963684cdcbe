"""Pyramid locations as torchvision's FCOS lays them out, for the assignment tests."""

from __future__ import annotations

import torch


def grid(size: int, strides: tuple[int, ...]) -> tuple[torch.Tensor, list[int]]:
    """Every pyramid location of a size x size input as its square anchor (one stride on a
    side), level by level, as torchvision's FCOS anchors are laid out."""
    anchors, counts = [], []
    for stride in strides:
        centres = torch.arange(stride / 2, size, stride)
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        x, y = x.flatten(), y.flatten()
        anchors.append(
            torch.stack([x - stride / 2, y - stride / 2, x + stride / 2, y + stride / 2], 1)
        )
        counts.append(len(x))
    return torch.cat(anchors), counts
