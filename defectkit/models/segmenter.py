"""U-Net family segmenters (segmentation_models_pytorch) on a timm encoder, with the
encoder's pretrained weights resolved offline like every backbone here, a first convolution
for any channel count, and an optional OK/NG head on the deepest encoder features (the gate).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from defectkit.config import ModelConfig, SegmentConfig
from defectkit.models.backbones import (
    Preprocessing,
    early_stage_parameters,
    preprocessing_for,
    pretrained_trunk,
)

ARCHS = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "deeplabv3plus": "DeepLabV3Plus",
}
DECODER_CHANNELS = (256, 128, 64, 32, 16)


class Segmenter(nn.Module):
    """images (B, C, H, W) -> (mask logits (B, H, W), OK/NG logits (B,)); without a gate
    the second output is zeros (every image goes on to the mask)."""

    def __init__(self, net: nn.Module, gate: bool):
        super().__init__()
        self.net, self.gate = net, gate

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(images)
        if self.gate:
            masks, labels = out
            return masks[:, 0], labels[:, 0]
        return out[:, 0], images.new_zeros(images.shape[0])

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.net.encoder.parameters())

    def early_stage_parameters(self, stages: int) -> list[nn.Parameter]:
        """The stem's and the encoder's first `stages` stages' parameters."""
        return early_stage_parameters(self.net.encoder.model, stages, "segment.frozen_stages")


def build_segmenter(
    model_config: ModelConfig, config: SegmentConfig, in_channels: int, *, pretrained: bool
) -> tuple[Segmenter, dict[str, Any], Preprocessing]:
    import segmentation_models_pytorch as smp

    if config.arch not in ARCHS:
        raise ValueError(f"unknown segment.arch {config.arch!r}; use one of {sorted(ARCHS)}")
    if not 1 <= config.encoder_depth <= 5:
        raise ValueError(f"segment.encoder_depth={config.encoder_depth}: use 3, 4 or 5")
    options: dict[str, Any] = {}
    if config.arch in ("unet", "unetplusplus"):
        options["decoder_channels"] = tuple(
            config.decoder_channels or DECODER_CHANNELS[-config.encoder_depth :]
        )
    net = getattr(smp, ARCHS[config.arch])(
        encoder_name=f"tu-{model_config.backbone}",
        encoder_weights=None,
        encoder_depth=config.encoder_depth,
        in_channels=in_channels,
        classes=1,
        aux_params={"classes": 1, "dropout": 0.2} if config.gate else None,
        **options,
    )
    info, source = pretrained_trunk(model_config, net.encoder.model, pretrained)
    segmenter = Segmenter(net, config.gate)
    if config.grad_checkpointing:
        checkpoint_blocks(segmenter, net.encoder.model, in_channels)
    return segmenter, info, preprocessing_for(model_config.backbone, source)


def checkpoint_blocks(model: nn.Module, trunk: nn.Module, in_channels: int) -> bool:
    """Keep only each encoder block's input in training and recompute the block in the
    backward pass (timm's gradient checkpointing), where the trunk offers it.

    The recompute runs every batch norm inside a block a second time on the same batch, so
    its running statistics would move twice a step. A one-step probe on a copy finds those
    layers and their momentum m becomes 1 - sqrt(1 - m): two moves then equal one move at m,
    and the trained statistics match a run without checkpointing."""
    if not hasattr(trunk, "set_grad_checkpointing"):
        return False
    trunk.set_grad_checkpointing(True)
    probe = copy.deepcopy(model).train()
    for parameter in probe.parameters():
        parameter.requires_grad_(True)
    out = probe(torch.zeros(2, in_channels, 64, 64))
    sum(part.float().sum() for part in out).backward()
    twice = {
        name
        for name, module in probe.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.num_batches_tracked is not None
        and int(module.num_batches_tracked) == 2
    }
    for name, module in model.named_modules():
        if name in twice and module.momentum is not None:
            module.momentum = 1 - math.sqrt(1 - module.momentum)
    return True
