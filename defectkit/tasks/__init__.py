"""Task registry: `register_task(name)` on a function `run(config, run_dir, resume)`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from defectkit.config import RunConfig

TaskRunner = Callable[[RunConfig, Path, bool], dict]
_TASKS: dict[str, TaskRunner] = {}


def register_task(name: str) -> Callable[[TaskRunner], TaskRunner]:
    def decorator(run: TaskRunner) -> TaskRunner:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is already registered")
        _TASKS[name] = run
        return run

    return decorator


def list_tasks() -> list[str]:
    _load_builtin()
    return sorted(_TASKS)


def get_task(name: str) -> TaskRunner:
    _load_builtin()
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def _load_builtin() -> None:
    from defectkit.tasks import anomaly, classify, segment  # noqa: F401  (they register)


def open_run(config: RunConfig, run_dir: Path, resume: bool):
    """What every trained task starts with: seeds, CPU threads, the device, the dataset and
    its split (the saved split.json when resuming), and split.json + config.yaml written.
    Returns (device, dataset, split)."""
    import torch

    from defectkit.config import save_config
    from defectkit.data.splits import load_manifest, make_split, save_manifest
    from defectkit.engine.train import pick_device, seed_everything

    seed_everything(config.train.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = pick_device(config.train.device)
    dataset = read_data(config, run_dir)
    manifest = run_dir / "split.json"
    split = load_manifest(dataset, manifest) if resume else make_split(dataset, config.split)
    save_manifest(split, dataset, manifest, config.split)
    save_config(config, run_dir / "config.yaml")
    return device, dataset, split


def read_data(config: RunConfig, run_dir: Path):
    """The run's dataset with every file checked (data.on_bad_image); samples left out for
    a bad file are listed in the run's left_out.json (and its report)."""
    from defectkit.data.checks import read_checked
    from defectkit.runs import write_json

    d = config.data
    dataset = read_checked(d.root, d.format, d.label_mode, d.on_bad_image)
    if dataset.left_out:
        write_json(run_dir / "left_out.json", [vars(b) for b in dataset.left_out])
        logging.getLogger("defectkit").warning(
            "left out %d sample(s) with a bad file (data.on_bad_image=skip): %s",
            len(dataset.left_out),
            "; ".join(f"{b.file}: {b.reason}" for b in dataset.left_out),
        )
    return dataset
