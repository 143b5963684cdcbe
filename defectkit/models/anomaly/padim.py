"""PaDiM (Defard et al. 2021): a Gaussian per patch position over pretrained features of
defect-free images; the Mahalanobis distance to it is the anomaly score. Suits parts that
are aligned in the image (same part, same pose)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from defectkit.models.anomaly import Gather, keep, register_method
from defectkit.models.anomaly.features import PatchFeatures


@register_method("padim")
class PaDiM(nn.Module):
    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: tuple[int, ...] = (2, 3),
        max_dims: int = 100,
        pretrained: bool = True,
        weights: str = "",
        seed: int = 0,
    ):
        super().__init__()
        self.features = PatchFeatures(backbone, layers, pretrained=pretrained, weights=weights)
        dims = min(max_dims, self.features.channels)
        generator = torch.Generator().manual_seed(seed)
        # a random subset of channels: the paper found it as good as PCA and far cheaper
        chosen = torch.randperm(self.features.channels, generator=generator)[:dims].sort().values
        self.register_buffer("channels", chosen)
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("inverse_covariance", torch.empty(0))

    @torch.inference_mode()
    def fit(self, batches: Iterable[torch.Tensor], gather: Gather = keep) -> dict[str, float]:
        """`gather`: this process's rows -> every process's, in image order (a sharded fit)."""
        feats = torch.cat([self.features(images)[:, self.channels].cpu() for images in batches])
        return self.fit_features(gather(feats))

    def fit_features(self, feats: torch.Tensor) -> dict[str, float]:
        """Gaussians from (N, dims, h, w) features of the training images."""
        n, c, h, w = feats.shape
        if n < 2:
            raise ValueError("PaDiM needs at least 2 defect-free training images")
        flat = feats.flatten(2)  # (images, dims, positions), a view
        means, inverses = [], []
        # a block of positions at a time in float64: the whole set in float64 would be
        # three copies of all training features
        for block in torch.arange(h * w).split(64):
            part = flat[:, :, block].permute(2, 0, 1).double()  # (positions, images, dims)
            mean = part.mean(1, keepdim=True)
            part -= mean
            covariance = part.transpose(1, 2) @ part / (n - 1)
            covariance += 0.01 * torch.eye(c, dtype=covariance.dtype)  # the paper's regulariser
            means.append(mean[:, 0].float())
            inverses.append(torch.linalg.inv(covariance).float())
        device = self.channels.device
        self.mean = torch.cat(means).to(device)
        self.inverse_covariance = torch.cat(inverses).to(device)
        return {
            "images": n,
            "positions": h * w,
            "dims": c,
            "model_mb": (self.mean.numel() + self.inverse_covariance.numel()) * 4 / 2**20,
        }

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mean.numel() == 0:
            raise RuntimeError("PaDiM is not fitted: fit it on defect-free images first")
        maps = self.score_features(self.features(images)[:, self.channels])
        return maps.flatten(1).max(1).values, maps

    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, dims, h, w) features -> (B, h, w) Mahalanobis distances."""
        b, c, h, w = feats.shape
        if h * w != self.mean.shape[0]:
            raise ValueError(
                f"images give a {h}x{w} feature grid, the model was fitted on "
                f"{self.mean.shape[0]} positions: use the training input size"
            )
        feats = feats.to(self.mean.device)  # features may come from elsewhere (a CPU cache)
        delta = feats.permute(2, 3, 0, 1).reshape(h * w, b, c) - self.mean[:, None]
        distance = ((delta @ self.inverse_covariance) * delta).sum(-1).clamp(min=0).sqrt()
        return distance.T.reshape(b, h, w)
