"""A convolutional autoencoder baseline: trained to reconstruct defect-free images, it
reconstructs defects badly, so the per-pixel reconstruction error is the anomaly map."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from defectkit.models.anomaly import register_method


def _block(cin: int, cout: int, down: bool) -> nn.Sequential:
    conv = (
        nn.Conv2d(cin, cout, 4, stride=2, padding=1)
        if down
        else nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
    )
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


@register_method("autoencoder")
class AutoEncoder(nn.Module):
    def __init__(
        self,
        width: int = 32,
        bottleneck: int = 64,
        lr: float = 1e-3,
        seed: int = 0,
    ):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(
            _block(3, width, True),
            _block(width, width * 2, True),
            _block(width * 2, width * 4, True),
            nn.Conv2d(width * 4, bottleneck, 3, padding=1),
        )
        self.decoder = nn.Sequential(
            _block(bottleneck, width * 4, False),
            _block(width * 4, width * 2, False),
            _block(width * 2, width, False),
            nn.Conv2d(width, 3, 3, padding=1),
        )
        self.lr = lr

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """The reconstruction loss of a batch: the anomaly task trains it over
        anomaly.epochs in the shared epoch loop (engine/fit.py: checkpoints, resume,
        history), with Adam at `lr`."""
        return F.mse_loss(self.reconstruct(images), images)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[-1] % 8 or images.shape[-2] % 8:
            raise ValueError(f"input side {tuple(images.shape[-2:])} must be a multiple of 8")
        maps = (self.reconstruct(images) - images).pow(2).mean(1)
        return maps.flatten(1).max(1).values, maps
