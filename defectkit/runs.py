"""The run folder: one folder per run holding everything it made, written so that an
interruption never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from defectkit.config import RunConfig


def new_run_dir(config: RunConfig) -> Path:
    name = config.name or f"{config.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(config.out_dir) / name
    if (path / "checkpoints" / "last.pt").exists():
        raise FileExistsError(
            f"run folder {path} already holds a run: resume it with "
            f"`defectkit train --resume {path}` or choose another name"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, payload: Any) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(temporary, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def machine_summary() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.machine()} {os.cpu_count()} cores, {gpu}, python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )


@contextlib.contextmanager
def training_log(run_dir: Path) -> Iterator[Any]:
    """The run's TensorBoard writer, closed at the end; Ctrl-C ends the run with the command
    that resumes it (last.pt is written atomically after every epoch)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tensorboard"))
    try:
        yield writer
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"interrupted; resume with: defectkit train --resume {run_dir}"
        ) from None
    finally:
        writer.close()


def log_epoch(writer: Any, history: list[dict], row: dict[str, Any]) -> None:
    """One epoch's row into the history and, every value but the epoch, into TensorBoard."""
    history.append(row)
    for key, value in row.items():
        if key != "epoch":
            writer.add_scalar(key, value, row["epoch"])


def state_mb(model: torch.nn.Module) -> float:
    """Size of a model's weights and buffers (what its bundle stores), in MB."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20


def write_history(path: Path, history: list[dict]) -> None:
    """history.csv: one row per epoch, every key any epoch logged."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
