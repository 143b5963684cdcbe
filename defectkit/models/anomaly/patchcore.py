"""PatchCore (Roth et al. 2022): locally aware patch features from a pretrained backbone,
a greedy coreset of them as memory bank, and nearest-neighbour distance as anomaly score.

Fitting is made fast on the CPU by running the greedy k-center selection on a random
projection of a random pool of patches: the selection is sequential, so its cost is
(coreset size) x (pool size) x (projection dims) and each step must stream the pool."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from defectkit.models.anomaly import Gather, keep, register_method
from defectkit.models.anomaly.features import PatchFeatures


def greedy_coreset(
    features: torch.Tensor,
    size: int,
    *,
    projection_dim: int = 64,
    pool: int = 200_000,
    seed: int = 0,
) -> torch.Tensor:
    """Indices of `size` rows chosen by greedy k-center: each pick is the row farthest from
    all picked so far, so the bank covers the feature space, rare patterns included."""
    generator = torch.Generator().manual_seed(seed)
    n = len(features)
    if size >= n:
        return torch.arange(n)
    candidates = torch.randperm(n, generator=generator)[:pool] if n > pool else torch.arange(n)
    points = features[candidates].float()
    if points.shape[1] > projection_dim:  # Johnson-Lindenstrauss: distances roughly kept
        projection = torch.randn(points.shape[1], projection_dim, generator=generator)
        points = points @ (projection / math.sqrt(projection_dim))
    squared = (points * points).sum(1)
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = int(torch.randint(len(points), (1,), generator=generator))
    nearest = torch.full((len(points),), float("inf"))
    for step in range(1, size + 1):
        centre = points[chosen[step - 1]]
        distance = squared - 2 * (points @ centre) + squared[chosen[step - 1]]
        torch.minimum(nearest, distance, out=nearest)
        if step < size:
            chosen[step] = int(torch.argmax(nearest))
    return candidates[chosen]


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Euclidean distance of each query row to its nearest bank row. The bank is walked in
    chunks (a fixed number of steps, so the same code exports to ONNX with any batch size)
    and memory stays at queries x chunk."""
    queries_squared = (queries * queries).sum(1, keepdim=True)
    nearest = None
    for start in range(0, len(bank), chunk):
        part = bank[start : start + chunk]
        d = (queries_squared - 2 * queries @ part.T + (part * part).sum(1)).amin(1)
        nearest = d if nearest is None else torch.minimum(nearest, d)
    if nearest is None:
        raise ValueError("the memory bank is empty")
    return nearest.clamp(min=0).sqrt()


@register_method("patchcore")
class PatchCore(nn.Module):
    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: tuple[int, ...] = (2, 3),
        coreset_ratio: float = 0.01,
        max_coreset: int = 10_000,
        projection_dim: int = 64,
        pool: int = 200_000,
        pretrained: bool = True,
        weights: str = "",
        seed: int = 0,
    ):
        super().__init__()
        self.features = PatchFeatures(
            backbone, layers, pretrained=pretrained, weights=weights, local=3
        )
        self.coreset_ratio, self.max_coreset = coreset_ratio, max_coreset
        self.projection_dim, self.pool, self.seed = projection_dim, pool, seed
        self.register_buffer("memory_bank", torch.empty(0, self.features.channels))

    @torch.inference_mode()
    def fit(self, batches: Iterable[torch.Tensor], gather: Gather = keep) -> dict[str, float]:
        """`gather`: this process's rows -> every process's, in image order (a sharded fit)."""
        patches = []
        for images in batches:
            feats = self.features(images)
            patches.append(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).cpu())
        return self.fit_patches(gather(torch.cat(patches)), feats.shape[-2:])

    def fit_patches(self, features: torch.Tensor, grid: torch.Size) -> dict[str, float]:
        """Memory bank from all training patches (rows, image after image on a `grid`)."""
        size = min(self.max_coreset, max(1, int(self.coreset_ratio * len(features))))
        index = greedy_coreset(
            features, size, projection_dim=self.projection_dim, pool=self.pool, seed=self.seed
        )
        self.memory_bank = features[index].contiguous().to(self.memory_bank.device)
        self.training_maps = self._leave_one_out_maps(features, index, grid)
        return {
            "patches": len(features),
            "memory_bank": len(index),
            "feature_dim": features.shape[1],
        }

    def _leave_one_out_maps(
        self, features: torch.Tensor, index: torch.Tensor, grid: torch.Size, most: int = 256
    ) -> dict[int, torch.Tensor]:
        """Patch maps of (a sample of) the training images scored against the memory bank
        without the image's own patches. A training image with a defect would otherwise
        look normal: the greedy coreset keeps exactly such rare patches."""
        per_image = grid[0] * grid[1]
        images = len(features) // per_image
        owner = index // per_image
        bank = features[index].float()
        bank_squared = (bank * bank).sum(1)
        generator = torch.Generator().manual_seed(self.seed)
        chosen = torch.randperm(images, generator=generator)[:most].sort().values
        # one distance buffer for all images: a fresh (patches x bank) matrix per image
        # fragments the heap and kept ~2 GB resident on magnetic tile
        squared = torch.empty(per_image, len(bank))
        maps = {}
        for i in chosen.tolist():
            queries = features[i * per_image : (i + 1) * per_image].float()
            torch.mm(queries, bank.T, out=squared)
            squared.mul_(-2).add_(bank_squared).add_((queries * queries).sum(1, keepdim=True))
            squared[:, owner == i] = float("inf")
            maps[i] = squared.amin(1).clamp(min=0).sqrt().reshape(grid)
        return maps

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image scores (B,), patch-level anomaly maps (B, h, w)); maps are raw distances."""
        if self.memory_bank.numel() == 0:
            raise RuntimeError("PatchCore has no memory bank: fit it on defect-free images first")
        maps = self.score_features(self.features(images))
        return maps.flatten(1).max(1).values, maps

    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) patch features -> (B, h, w) distances to the memory bank."""
        b, c, h, w = feats.shape
        flat = feats.permute(0, 2, 3, 1).reshape(-1, c)
        return nearest_distance(flat, self.memory_bank).reshape(b, h, w)
