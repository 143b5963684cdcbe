"""An exponential moving average of the weights (train.ema): a copy of the model that
follows the training weights after every optimiser step, the way YOLO, EfficientDet and
timm train detectors. Validation, the best checkpoint and the bundle use the average; the
training weights go on learning. torch's AveragedModel keeps it; the decay warms up as
TensorFlow's ExponentialMovingAverage does ((1 + n) / (10 + n) before it reaches
train.ema), so a short run averages over about its last tenth of steps instead of over
its start."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def warmed_decay(decay: float, updates: int) -> float:
    """The weight the average keeps at its `updates`-th update."""
    return min(decay, (1 + updates) / (10 + updates))


def _ema_with_warmup(decay: float):
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor):
        # AveragedModel groups tensors by dtype: integer buffers (batch-norm counters)
        # follow the training weights
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        kept = warmed_decay(decay, int(n))
        torch._foreach_lerp_(averaged, current, 1.0 - kept)

    return update


class WeightAverage:
    """The average of `model`'s parameters and buffers (batch-norm statistics included),
    updated by a hook after each optimiser step (a GradScaler's skipped step is no step)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema is a decay in (0, 1), such as 0.9998, not {decay}")
        self.model = model
        self.average = AveragedModel(
            model, multi_avg_fn=_ema_with_warmup(decay), use_buffers=True
        ).eval()
        self.average.requires_grad_(False)
        self.hook = optimizer.register_step_post_hook(lambda *_: self.update())

    def update(self) -> None:
        self.average.update_parameters(self.model)

    @property
    def updates(self) -> int:
        return int(self.average.n_averaged)

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged weights under the model's own names (what best.pt keeps)."""
        return self.average.module.state_dict()

    def state_dict(self) -> dict[str, Any]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state)

    def swapped_in(self) -> _Swap:
        """`with average.swapped_in():` the model holds the averaged weights (to validate
        them with the task's own code), and its training weights again afterwards."""
        return _Swap(self)


class _Swap:
    def __init__(self, average: WeightAverage):
        self.average, self.kept = average, None

    def __enter__(self) -> None:
        model = self.average.model
        self.kept = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.average.weights())

    def __exit__(self, *exc: object) -> None:
        self.average.model.load_state_dict(self.kept)
        self.kept = None
