"""The epoch loop every trainable task runs: resume from last.pt, one epoch of the task's
own training, validation, history.csv and TensorBoard, the best weights kept (an
exponential moving average of them with train.ema), one checkpoint schema written
atomically after every epoch, early stopping. The task brings what differs: its epoch
(which modules train, its step) and its validation numbers."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from defectkit.engine.average import WeightAverage
from defectkit.engine.distributed import barrier, is_main
from defectkit.engine.train import RandomSource, restore, rng_state, save_checkpoint
from defectkit.runs import log_epoch, training_log, write_history

log = logging.getLogger(__name__)


@dataclass
class Fit:
    """What one task's training needs from the loop, and what the loop gives back."""

    task: str
    model: nn.Module  # what checkpoints store (the whole model, even when a part trains)
    optimizer: torch.optim.Optimizer
    schedule: Any
    epochs: int
    # the task's epoch: trains one pass, returns its logged values (train_loss, ...)
    run_epoch: Callable[[int], dict[str, float]]
    # validation values for the history (val_loss, val_defect_iou, ...), or None
    validate: Callable[[], dict[str, float]] | None
    # the number to keep the best epoch by, higher is better (-val_loss, val IoU, ...)
    score: Callable[[dict[str, Any]], float]
    # the epoch's line in the log
    line: Callable[[dict[str, Any]], str]
    early_stopping: int = 0  # epochs without a better score before stopping; 0 = off
    scaler: Any = None  # fp16 GradScaler, saved and restored with the rest
    # train.ema: the decay of a moving average of the weights that validation, best.pt
    # and so the bundle use (engine/average.py); 0 = the training weights themselves
    ema: float = 0.0
    rng_sources: tuple[RandomSource | None, ...] = ()  # the run's own generators
    extra: dict[str, Any] = field(default_factory=dict)  # in every checkpoint (config, classes)
    history: list[dict] = field(default_factory=list)


def fit(loop: Fit, run_dir: Path, resume: bool) -> Path:
    """Train for loop.epochs (from the last checkpoint when resuming); returns best.pt."""
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    start, best, stale = 0, -float("inf"), 0
    average = WeightAverage(loop.model, loop.optimizer, loop.ema) if loop.ema else None
    if resume and last_path.exists():
        state = restore(last_path, loop.model, loop.optimizer, loop.schedule, *loop.rng_sources)
        if loop.scaler is not None and state.get("scaler"):
            loop.scaler.load_state_dict(state["scaler"])
        if average is not None and state.get("ema"):
            average.load_state_dict(state["ema"])
        loop.history[:] = state["history"]
        # checkpoints before the shared loop kept a classifier's best as a loss (lower wins)
        best = state["best"] if "best" in state else -state["best_loss"]
        stale, start = state.get("stale", 0), state["epoch"] + 1
        if loop.early_stopping and stale >= loop.early_stopping:
            start = loop.epochs  # it had stopped early: its training is over
        if start < loop.epochs:
            log.info("resumed %s at epoch %d of %d", run_dir, start + 1, loop.epochs)
        else:
            log.info("%s: training finished before (%d epochs)", run_dir, len(loop.history))
    main = is_main()  # under torchrun only rank 0 writes; every rank keeps the same history
    with training_log(run_dir, enabled=main) as writer:
        for epoch in range(start, loop.epochs):
            tick = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1, **loop.run_epoch(epoch)}
            row["lr"] = loop.optimizer.param_groups[0]["lr"]
            if loop.validate is not None:
                with average.swapped_in() if average else contextlib.nullcontext():
                    row.update(loop.validate())
            row["seconds"] = time.perf_counter() - tick
            log_epoch(writer, loop.history, row)
            score = loop.score(row)
            improved = score > best
            best, stale = (score, 0) if improved else (best, stale + 1)
            payload = {
                "task": loop.task,
                "model": loop.model.state_dict(),
                "optimizer": loop.optimizer.state_dict(),
                "schedule": loop.schedule.state_dict(),
                "scaler": loop.scaler.state_dict() if loop.scaler is not None else None,
                "ema": average.state_dict() if average is not None else None,
                "rng": rng_state(*loop.rng_sources),
                "epoch": epoch,
                "history": loop.history,
                "best": best,
                "stale": stale,
                **loop.extra,
            }
            if main:
                save_checkpoint(last_path, payload)
                if improved:
                    keep = {k: payload[k] for k in ("task", "model", "epoch", *loop.extra)}
                    if average is not None:
                        keep["model"] = average.weights()
                    save_checkpoint(best_path, keep)
                tqdm.write(loop.line(row))
                write_history(run_dir / "history.csv", loop.history)
            if loop.early_stopping and stale >= loop.early_stopping:
                if main:
                    tqdm.write(f"early stop: no better validation score for {stale} epochs")
                break
    if average is not None:
        average.hook.remove()
    barrier()  # the other ranks wait for rank 0's last checkpoint
    return best_path
