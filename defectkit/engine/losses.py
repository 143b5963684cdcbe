"""Losses for imbalanced defect data."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, so
    easy, plentiful OK images weigh less than the rare hard defects."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()


def balanced_class_weights(targets: list[int], num_classes: int) -> torch.Tensor:
    """n / (k * n_c): the weighting scikit-learn calls "balanced"."""
    counts = torch.bincount(torch.tensor(targets), minlength=num_classes).float().clamp(min=1)
    return counts.sum() / (num_classes * counts)


def make_loss(
    name: str, *, weight: torch.Tensor | None, label_smoothing: float, focal_gamma: float
) -> nn.Module:
    if name == "ce":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    if name == "focal":
        return FocalLoss(focal_gamma, weight)
    raise ValueError(f"unknown train.loss {name!r}; use ce or focal")
