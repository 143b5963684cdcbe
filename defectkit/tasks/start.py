"""What every task's run starts with: seeds, threads, the device, the checked dataset and its
split, split.json and config.yaml written (`open_run`); the dataset read and every setting
and file checked (`read_data`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from defectkit.config import RunConfig


def open_run(
    config: RunConfig,
    run_dir: Path,
    resume: bool,
    make_split_with: Callable[[Any], Any] | None = None,
    method: str = "",
):
    """What every task's run starts with: seeds, CPU threads, the device, the dataset and
    its split (`make_split_with(dataset)` for a task's own rule, else split.method; the saved
    split.json when resuming), and split.json + config.yaml written.
    Returns (device, dataset, split)."""
    import torch

    from defectkit.config import save_config
    from defectkit.data.splits import load_manifest, make_split, save_manifest
    from defectkit.engine.distributed import barrier, init_distributed, is_main, launched
    from defectkit.engine.train import pick_device, seed_everything

    seed_everything(config.train.seed)  # the same on every rank: the same split everywhere
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = (
        init_distributed(config.train.device) if launched() else pick_device(config.train.device)
    )
    dataset = read_data(config, run_dir)
    manifest = run_dir / "split.json"
    if resume:
        split = load_manifest(dataset, manifest)
    elif make_split_with is not None:
        split = make_split_with(dataset)
    else:
        split = make_split(dataset, config.split)
    if is_main():
        save_manifest(split, dataset, manifest, config.split, method)
        save_config(config, run_dir / "config.yaml")
    barrier()
    return device, dataset, split


def read_data(config: RunConfig, run_dir: Path):
    """The run's dataset, every setting held against it (tasks/settings.py), then every file
    checked (data.on_bad_image); samples left out for a bad file are listed in the run's
    left_out.json (and its report)."""
    from defectkit.data.checks import check_dataset
    from defectkit.data.formats import read_dataset
    from defectkit.engine.distributed import is_main
    from defectkit.runs import write_json
    from defectkit.tasks.settings import check_settings

    d = config.data
    dataset = read_dataset(d.root, d.format, d.label_mode, d.labels or None)
    check_settings(config, dataset)  # before a single image is decoded
    dataset = check_dataset(dataset, d.on_bad_image)
    if dataset.left_out and is_main():
        write_json(run_dir / "left_out.json", [vars(b) for b in dataset.left_out])
        logging.getLogger("defectkit").warning(
            "left out %d sample(s) with a bad file (data.on_bad_image=skip): %s",
            len(dataset.left_out),
            "; ".join(f"{b.file}: {b.reason}" for b in dataset.left_out),
        )
    return dataset
