"""Patch features from a frozen pretrained backbone, shared by the feature-based methods."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from defectkit.models.backbones import create_backbone


class PatchFeatures(nn.Module):
    """(B, C, h, w) features on the grid of the first requested stage: deeper stages are
    upsampled onto it and concatenated; `local` > 1 averages each stage over a local
    neighbourhood first (PatchCore's locally aware patches)."""

    def __init__(
        self,
        backbone: str,
        layers: tuple[int, ...],
        *,
        pretrained: bool,
        weights: str = "",
        local: int = 1,
    ):
        super().__init__()
        self.backbone, self.weights_info = create_backbone(
            backbone, 0, pretrained=pretrained, weights=weights
        )
        self.backbone.eval().requires_grad_(False)
        self.layers, self.local = tuple(layers), local
        self.channels = sum(self.backbone.feature_info[i]["num_chs"] for i in self.layers)

    def train(self, mode: bool = True) -> PatchFeatures:
        super().train(mode)
        self.backbone.eval()  # batch norms keep their ImageNet statistics
        return self

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.combine(self.intermediates(images), self.local)

    def intermediates(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The requested stages' feature maps, one backbone pass."""
        return self.backbone.forward_intermediates(
            images, indices=list(self.layers), intermediates_only=True, stop_early=True
        )

    @staticmethod
    def combine(maps: list[torch.Tensor], local: int) -> torch.Tensor:
        """Stages averaged over a local x local neighbourhood, upsampled onto the first
        stage's grid and concatenated."""
        if local > 1:
            maps = [F.avg_pool2d(m, local, stride=1, padding=local // 2) for m in maps]
        size = maps[0].shape[-2:]
        maps = [maps[0]] + [
            F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]
        ]
        return torch.cat(maps, 1)
