"""A bundle's metrics on labelled images, the way the Inspector sees them on the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defectkit.data.checks import read_checked
from defectkit.data.splits import load_manifest
from defectkit.runtime.inspector import Inspector
from defectkit.tasks import get_task


def labelled_samples(
    data: str | Path,
    format: str = "auto",
    label_mode: str = "default",
    split_manifest: str | Path | None = None,
    part: str = "test",
    on_bad_image: str = "error",
):
    """A labelled dataset with every file checked, and the samples to score: all of them,
    or one part of a run's saved split."""
    dataset = read_checked(data, format, label_mode, on_bad_image)
    if split_manifest:
        return dataset, load_manifest(dataset, Path(split_manifest)).parts()[part]
    return dataset, dataset.samples


def evaluate_bundle(
    bundle: str | Path,
    data: str | Path,
    format: str = "auto",
    label_mode: str = "default",
    split_manifest: str | Path | None = None,
    part: str = "test",
    on_bad_image: str = "error",
) -> dict[str, Any]:
    """Score a bundle on a labelled dataset, the way the Inspector will see it on the line:
    all of the dataset, or one part of a run's saved split. Every file is checked first;
    with on_bad_image="skip" the bad ones are left out and listed under "left_out"."""
    inspector = Inspector(bundle, raw_maps=True)
    dataset, samples = labelled_samples(
        data, format, label_mode, split_manifest, part, on_bad_image
    )
    left_out = {"left_out": [vars(b) for b in dataset.left_out]} if dataset.left_out else {}
    task = get_task(inspector.task)
    return {"task": task.name, **task.evaluate_bundle(inspector, samples, str(data)), **left_out}
