"""A trained EfficientNet-Lite0 trunk against the one loaded before training, for
frozen_stages=2 (segment and detect): the stem and blocks 0-1 as loaded, block 2 trained."""

from __future__ import annotations

import torch


def assert_first_two_stages_as_loaded(
    before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str
) -> None:
    """Weights and batch-norm statistics of the stem and the first two stages unchanged,
    those of the third stage changed (`prefix`: the trunk's name in the state dicts)."""
    for name in (
        "conv_stem.weight",
        "bn1.running_mean",
        "blocks.1.0.conv_pw.weight",
        "blocks.1.1.bn3.running_var",
    ):
        assert torch.equal(after[prefix + name], before[prefix + name]), name
    for name in ("blocks.2.0.conv_pw.weight", "blocks.2.1.bn3.running_var"):
        assert not torch.equal(after[prefix + name], before[prefix + name]), name
