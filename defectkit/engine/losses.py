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


class OrdinalLoss(nn.Module):
    """For grades (classes whose name order is their severity, e.g. ELPV's p000 < p033 <
    p067 < p100): cross-entropy plus `weight` x the squared earth mover's distance between
    the predicted and the true distribution over the grades (Hou et al. 2016: the squared
    differences of their cumulative sums). Cross-entropy alone costs calling a 1/3 cell 2/3
    as much as calling it 0 or 1; the distance term makes a neighbouring grade the cheaper
    mistake. The model is unchanged (softmax over the grades, argmax decides), so bundles,
    export and serving are as for cross-entropy."""

    def __init__(
        self,
        weight: float = 1.0,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.weight = weight
        self.cross_entropy = nn.CrossEntropyLoss(
            weight=class_weights, label_smoothing=label_smoothing, reduction="none"
        )
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        predicted = F.softmax(logits, dim=1).cumsum(1)
        true = F.one_hot(target, logits.shape[1]).float().cumsum(1)
        distance = (predicted - true)[:, :-1].pow(2).sum(1)  # the last sums are both 1
        cross = self.cross_entropy(logits, target)
        if self.class_weights is None:
            return cross.mean() + self.weight * distance.mean()
        w = self.class_weights[target]
        return (cross.sum() + self.weight * (distance * w).sum()) / w.sum()


def balanced_class_weights(targets: list[int], num_classes: int) -> torch.Tensor:
    """n / (k * n_c): the weighting scikit-learn calls "balanced"."""
    counts = torch.bincount(torch.tensor(targets), minlength=num_classes).float().clamp(min=1)
    return counts.sum() / (num_classes * counts)


LOSSES = ("ce", "focal", "ordinal")


def make_loss(
    name: str,
    *,
    weight: torch.Tensor | None,
    label_smoothing: float,
    focal_gamma: float,
    ordinal_weight: float = 1.0,
) -> nn.Module:
    if name == "ce":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    if name == "focal":
        return FocalLoss(focal_gamma, weight)
    if name == "ordinal":
        return OrdinalLoss(ordinal_weight, weight, label_smoothing)
    raise ValueError(f"unknown train.loss {name!r}; use one of {', '.join(LOSSES)}")


class MaskLoss(nn.Module):
    """Binary segmentation losses on logits (B, 1, H, W) against masks in {0, 1}.

    bce, dice (soft, over the batch), bce_dice (weighted sum), focal (binary, Lin et al.)
    tversky (Salehi et al.: alpha weighs false positives, beta false negatives; beta >
    alpha favours recall of small defects) and lovasz (Berman et al. 2018: the Lovasz hinge,
    a convex surrogate of 1 - IoU, image by image). `weights` (B,) drops images (0)."""

    NAMES = ("bce", "dice", "bce_dice", "focal", "tversky", "lovasz")

    def __init__(
        self,
        name: str = "bce_dice",
        bce_weight: float = 0.8,
        dice_weight: float = 0.2,
        gamma: float = 2.0,
        alpha: float = 0.3,
        beta: float = 0.7,
    ):
        super().__init__()
        if name not in self.NAMES:
            raise ValueError(f"unknown segment.loss {name!r}; use one of {self.NAMES}")
        self.name, self.bce_weight, self.dice_weight = name, bce_weight, dice_weight
        self.gamma, self.alpha, self.beta = gamma, alpha, beta

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        if weights is not None:
            keep = weights > 0
            if not keep.any():
                return logits.sum() * 0.0
            logits, target = logits[keep], target[keep]
        if self.name == "bce":
            return F.binary_cross_entropy_with_logits(logits, target)
        if self.name == "dice":
            return soft_dice_loss(logits, target)
        if self.name == "bce_dice":
            return self.bce_weight * F.binary_cross_entropy_with_logits(
                logits, target
            ) + self.dice_weight * soft_dice_loss(logits, target)
        if self.name == "focal":
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            p_true = torch.exp(-bce)
            return ((1 - p_true) ** self.gamma * bce).mean()
        if self.name == "lovasz":
            return torch.stack(
                [
                    lovasz_hinge(x.flatten(), t.flatten())
                    for x, t in zip(logits, target, strict=True)
                ]
            ).mean()
        p = logits.sigmoid()
        tp = (p * target).sum()
        fp = (p * (1 - target)).sum()
        fn = ((1 - p) * target).sum()
        return 1 - (tp + 1) / (tp + self.alpha * fp + self.beta * fn + 1)


def lovasz_hinge(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Lovasz hinge of one image's pixel logits against its {0, 1} mask: hinge errors
    sorted from the worst, each weighted by how much it raises the Jaccard loss (1 - IoU)
    of the mask predicted so far. An image without defects pays for its worst false
    positive."""
    signs = 2 * target - 1
    errors = 1 - logits * signs
    errors, order = errors.sort(descending=True)
    truth = target[order]
    defects = truth.sum()
    intersection = defects - truth.cumsum(0)
    union = defects + (1 - truth).cumsum(0)
    jaccard = 1 - intersection / union
    weights = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return torch.dot(F.relu(errors), weights)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch (images without defects count through the
    smoothing term, so an all-OK batch asks for an empty mask)."""
    p = logits.sigmoid()
    intersection = (p * target).sum()
    return 1 - (2 * intersection + smooth) / (p.sum() + target.sum() + smooth)
