"""The run folder: one folder per run holding everything it made, written so that an
interruption never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import csv
import gc
import hashlib
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defectkit.config import RunConfig

if TYPE_CHECKING:  # torch is imported where it is used: reading a bundle needs none of it
    import torch

# settings a resumed run may change: where and how fast it runs, not what it computes
RESUME_MAY_CHANGE = (
    "train.threads",
    "train.device",
    "data.num_workers",
    "data.cache_images",
    "segment.grad_checkpointing",
    "eval.worst_k",
    "out_dir",
    "name",
)
# settings `defectkit calibrate` may change on a finished run: how its trained model's
# scores become decisions (thresholds, box post-processing, test-time views), not the weights
CALIBRATE_MAY_CHANGE = (
    *RESUME_MAY_CHANGE,
    "eval.positive",
    "eval.threshold_rule",
    "eval.target",
    "eval.tta",
    "anomaly.false_alarm_rate",
    "detect.box_rule",
    "detect.box_target",
    "detect.threshold",
    "detect.score_floor",
    "detect.nms_iou",
    "detect.max_boxes",
    "detect.match_iou",
    "detect.tta_merge",
)
# what a finished run's evaluation wrote; `defectkit calibrate` moves them to before/<n>/
EVALUATION_OUTPUTS = ("metrics.json", "bundle", "report.html", "predictions.csv", "plots")


def new_run_dir(config: RunConfig) -> tuple[Path, bool]:
    """The run's folder and whether this call made it (a failed start removes only that)."""
    name = config.name or f"{config.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(config.out_dir) / name
    if has_checkpoint(path) or (path / "metrics.json").exists():
        raise FileExistsError(
            f"run folder {path} already holds a run: resume it with "
            f"`defectkit train --resume {path}`, or choose another name with --set name=..."
        )
    made = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    (path / FAILED).unlink(missing_ok=True)
    return path, made


FAILED = "FAILED.txt"


def has_checkpoint(run_dir: Path) -> bool:
    """A checkpoint a resume can start from (last.pt of an epoch, fitted.pt of a fit)."""
    folder = run_dir / "checkpoints"
    return folder.is_dir() and any(folder.glob("*.pt"))


def close_failed_start(run_dir: Path, made: bool, error: BaseException) -> str:
    """After a run failed: a folder with a checkpoint stays (it resumes); one without is
    removed when this run made it, else marked FAILED.txt (resume refuses it). Returns what
    was done, for the message."""
    import shutil

    if has_checkpoint(run_dir):
        return f"resume with: defectkit train --resume {run_dir}"
    if made:
        shutil.rmtree(run_dir, ignore_errors=True)
        return f"nothing was trained; the run folder {run_dir} was removed"
    (run_dir / FAILED).write_text(f"{type(error).__name__}: {error}\n")
    return f"nothing was trained; {run_dir / FAILED} says why"


def sha256_of(path: Path) -> str:
    """A file's SHA-256 (weights, bundles, exports are checked against it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def release_freed_memory() -> None:
    """Hand the memory Python and torch have freed back to the system. glibc keeps freed heap
    pages mapped (measured: 0.76 GB after an anomaly fit on the magnetic tile set), so the
    peak of the next step adds to them; a no-op where the C library is not glibc."""
    import ctypes
    import ctypes.util

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)


def machine_summary() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.machine()} {os.cpu_count()} cores, {gpu}, python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )


@contextlib.contextmanager
def training_log(run_dir: Path, enabled: bool = True) -> Iterator[Any]:
    """The run's TensorBoard writer (None when not `enabled`: the ranks of a distributed run
    other than 0), closed at the end; Ctrl-C ends the run with the command that resumes it
    (last.pt is written atomically after every epoch)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tensorboard")) if enabled else None
    try:
        yield writer
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"interrupted; resume with: defectkit train --resume {run_dir}"
        ) from None
    finally:
        if writer is not None:
            writer.close()


def log_epoch(writer: Any, history: list[dict], row: dict[str, Any]) -> None:
    """One epoch's row into the history and, every value but the epoch, into TensorBoard."""
    history.append(row)
    for key, value in row.items():
        if key != "epoch" and writer is not None:
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
