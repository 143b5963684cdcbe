"""The training loop shared by the supervised tasks: optimiser, schedule, sampler,
one epoch at a time, atomic checkpoints that carry their config, and resume."""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, WeightedRandomSampler
from tqdm.auto import tqdm

from defectkit.config import TrainConfig


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA GPU is visible; use auto or cpu")
    return torch.device(name)


def trunk_and_head_groups(
    model: nn.Module, trunk: list[nn.Parameter], config: TrainConfig
) -> list[dict]:
    """Two parameter groups: the pretrained trunk at train.lr, everything else (decoder,
    pyramid, heads) at lr x head_lr_mult; weight decay on both."""
    ids = {id(p) for p in trunk}
    groups = [
        {"params": [p for p in model.parameters() if id(p) in ids], "lr": config.lr},
        {
            "params": [p for p in model.parameters() if id(p) not in ids],
            "lr": config.lr * config.head_lr_mult,
        },
    ]
    for group in groups:
        group["weight_decay"] = config.weight_decay
    return groups


def make_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    raise ValueError(f"unknown train.optimizer {config.optimizer!r}; use adamw, adam or sgd")


def lone_last_batch(dataset: Any, sampler: Any, batch_size: int) -> bool:
    """Whether a training epoch would end on a batch of one image, which batch norm cannot
    train on ("expected more than 1 value per channel"): the loaders drop that one batch
    (and only then, so every other dataset trains on every image every epoch)."""
    count = len(sampler) if sampler is not None else len(dataset)
    return count > batch_size and count % batch_size == 1


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimiser steps in an epoch of `batches` when gradients add up over `accumulate`."""
    return -(-batches // max(1, accumulate))


def make_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step multiplier (steps of the optimiser): linear warm-up, then cosine / step /
    exponential / constant."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = config.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        epoch = step / steps_per_epoch
        if config.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if config.schedule == "step":
            return config.gamma ** int(epoch // config.step_size)
        if config.schedule == "exponential":
            return config.gamma**epoch
        if config.schedule == "constant":
            return 1.0
        raise ValueError(
            f"unknown train.schedule {config.schedule!r}; use cosine, step, exponential or constant"
        )

    factor(0)  # fail on a bad name now, not after the first epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class UndersampleSampler(Sampler[int]):
    """Each epoch, every class contributes as many (fresh, random) samples as the rarest one."""

    def __init__(self, targets: Sequence[int], seed: int):
        self.by_class: dict[int, list[int]] = {}
        for index, target in enumerate(targets):
            self.by_class.setdefault(target, []).append(index)
        self.per_class = min(len(v) for v in self.by_class.values())
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.per_class * len(self.by_class)

    def __iter__(self) -> Iterator[int]:
        chosen = []
        for members in self.by_class.values():
            picks = torch.randperm(len(members), generator=self.generator)[: self.per_class]
            chosen += [members[i] for i in picks.tolist()]
        order = torch.randperm(len(chosen), generator=self.generator).tolist()
        return iter([chosen[i] for i in order])


def mixed_precision(enabled: bool, device: torch.device) -> tuple[torch.dtype | None, Any]:
    """(autocast dtype, grad scaler): bf16 where the GPU has it (no scaler needed), else fp16
    with a scaler that starts low, so that a short run does not skip its first steps while
    the scale backs off from 65536."""
    if not enabled or device.type != "cuda":
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler(init_scale=2.0**10)


def make_sampler(kind: str, targets: Sequence[int], seed: int) -> Sampler[int] | None:
    if kind == "none":
        return None
    if kind == "oversample":
        counts = np.bincount(targets)
        weights = 1.0 / counts[np.asarray(targets)]
        generator = torch.Generator().manual_seed(seed)
        return WeightedRandomSampler(
            weights.tolist(), num_samples=len(targets), replacement=True, generator=generator
        )
    if kind == "undersample":
        return UndersampleSampler(targets, seed)
    raise ValueError(f"unknown train.sampler {kind!r}; use none, oversample or undersample")


Step = Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, int, dict[str, float]]]


def classification_step(loss_fn: nn.Module) -> Step:
    """A classifier's training step: (images, class indices) -> loss, count, correct."""

    def step(model: nn.Module, batch: Any, device: torch.device):
        inputs, targets = batch
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device)
        logits = model(inputs)
        loss = loss_fn(logits, targets)
        return loss, len(targets), {"accuracy": (logits.argmax(1) == targets).sum().item()}

    return step


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    before_step: Callable[[nn.Module], None] | None = None,
    description: str = "train",
    step: Step | None = None,
    accumulate: int = 1,
) -> dict[str, float]:
    """One pass over `loader`: the task's `step` gives each batch's loss, its sample count
    and sums to average (a classifier's: `loss_fn` on (images, targets), and the correct
    ones); returns the mean loss and the mean of each sum over the samples seen. With
    `accumulate` > 1 the gradients of that many batches add up (each loss scaled by
    1 / accumulate) before one optimiser and schedule step."""
    step = step or classification_step(loss_fn)
    model.train()
    if before_step is not None:
        before_step(model)
    total_loss, sums, seen = 0.0, {}, 0
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    bar = tqdm(
        loader, desc=description, leave=False, dynamic_ncols=True, mininterval=1.0, disable=None
    )  # None: no bar when the output is not a terminal
    accumulate = max(1, accumulate)
    batches = len(loader)
    optimizer.zero_grad(set_to_none=True)
    for index, batch in enumerate(bar):
        last = (index + 1) % accumulate == 0 or index + 1 == batches
        # under DDP, gradients are averaged across ranks only at the batch that steps
        sync = (
            contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        )
        with sync:
            with autocast:
                loss, count, batch_sums = step(model, batch, device)
            scaled = loss / accumulate if accumulate > 1 else loss
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if last:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
        total_loss += loss.item() * count
        for key, value in batch_sums.items():
            sums[key] = sums.get(key, 0.0) + value
        seen += count
        bar.set_postfix(
            loss=f"{total_loss / seen:.4f}", **{k: f"{v / seen:.3f}" for k, v in sums.items()}
        )
    return {"loss": total_loss / max(1, seen), **{k: v / max(1, seen) for k, v in sums.items()}}


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of every sample in loader order; `forward(model, inputs)` in place
    of the model's own forward gives other outputs (e.g. test-time-augmented probabilities)."""
    model.eval()
    outputs, targets = [], []
    for inputs, target in loader:
        inputs = inputs.to(device)
        outputs.append((forward(model, inputs) if forward else model(inputs)).float().cpu())
        targets.append(torch.as_tensor(target))
    if not outputs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(outputs), torch.cat(targets)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary name, then rename: an interruption never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint of ours, loaded without unpickling arbitrary objects."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a defectkit checkpoint ({error})") from None
    if not isinstance(payload, dict) or "model" not in payload or "task" not in payload:
        raise ValueError(f"{path} is not a defectkit checkpoint (no model/task entries)")
    return payload


RandomSource = torch.Generator | random.Random


def rng_state(*sources: RandomSource | None) -> dict[str, Any]:
    """Every random number generator a run draws from, as tensors and plain values (so the
    checkpoint loads with weights_only): torch (and CUDA), NumPy's and Python's global ones,
    and the run's own (a sampler's generator, a dataset's random.Random)."""
    numpy = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [torch.from_numpy(numpy[1].astype(np.int64)), *map(float, numpy[2:])],
        "python": _python_state(random),
        "own": [None if s is None else _source_state(s) for s in sources],
    }


def set_rng_state(state: dict[str, Any], *sources: RandomSource | None) -> None:
    """Put back what rng_state captured, so that a resumed run draws the same numbers."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state(
        ("MT19937", keys.numpy().astype(np.uint32), int(position), int(has_gauss), gauss)
    )
    random.setstate(_python_tuple(state["python"]))
    for source, saved in zip(sources, state["own"], strict=True):
        if source is None:
            continue
        if isinstance(source, torch.Generator):
            source.set_state(saved)
        else:
            source.setstate(_python_tuple(saved))


def _python_state(source: Any) -> list:
    version, keys, gauss = source.getstate()
    return [version, torch.tensor(keys, dtype=torch.int64), gauss]


def _python_tuple(saved: list) -> tuple:
    version, keys, gauss = saved
    return version, tuple(int(k) for k in keys.tolist()), gauss


def _source_state(source: RandomSource) -> Any:
    return source.get_state() if isinstance(source, torch.Generator) else _python_state(source)


def generator_of(sampler: Any) -> torch.Generator | None:
    """The sampler's own generator, if it draws from one (its state goes in the checkpoint)."""
    return getattr(sampler, "generator", None)


def restore(
    path: Path, model: nn.Module, optimizer, schedule, *sources: RandomSource | None
) -> dict[str, Any]:
    """Load last.pt into the model, optimiser and schedule, and every RNG state (the global
    ones and `sources`, given in the order they were saved); returns the checkpoint for the
    task's own counters (epoch, history, best)."""
    state = load_checkpoint(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    set_rng_state(state["rng"], *sources)
    return state
