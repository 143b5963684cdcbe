"""U-Net family segmenters (segmentation_models_pytorch) on a timm encoder, with the
encoder's pretrained weights resolved offline like every backbone here, a first convolution
for any channel count, and an optional OK/NG head on the deepest encoder features (the gate).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from defectkit.config import ModelConfig, SegmentConfig
from defectkit.models.backbones import Preprocessing, create_backbone, preprocessing_for

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
    info: dict[str, Any] = {"pretrained": False}
    source = None
    if pretrained:
        source, info = create_backbone(
            model_config.backbone,
            0,
            pretrained=True,
            weights=model_config.weights,
            weights_sha256=model_config.weights_sha256,
        )
        info = {**info, **load_encoder_weights(net.encoder.model, source.state_dict())}
    return Segmenter(net, config.gate), info, preprocessing_for(model_config.backbone, source)


def load_encoder_weights(encoder: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Copy the pretrained trunk into the encoder by name; a first convolution with another
    channel count gets the RGB filters repeated over the channels and scaled by 3 / channels
    (timm's adapt_input_conv), so a stacked image + reference starts as the mean response
    of both instead of from random filters."""
    from timm.models import adapt_input_conv

    target = encoder.state_dict()
    loaded, adapted = {}, []
    for name, tensor in target.items():
        if name not in state:
            continue
        weight = state[name]
        if weight.shape != tensor.shape and weight.ndim == 4 and weight.shape[1] == 3:
            weight = adapt_input_conv(tensor.shape[1], weight)
            adapted.append(name)
        if weight.shape == tensor.shape:
            loaded[name] = weight
    if not loaded:
        raise ValueError("no pretrained encoder weight matched the segmenter's encoder")
    encoder.load_state_dict(loaded, strict=False)
    return {"encoder_tensors_loaded": len(loaded), "first_conv_adapted": adapted}
