"""A bundle's metrics on labelled images, the way the Inspector sees them on the line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectkit.data.checks import read_checked
from defectkit.data.samples import Sample, SampleSet
from defectkit.data.splits import load_manifest
from defectkit.runtime.inspector import Inspector
from defectkit.tasks import get_task


@dataclass(frozen=True)
class LabelledData:
    """The labelled images a bundle is scored on (`eval`, `compare`): a dataset folder in one
    of the layouts `defectkit data formats` lists, all of it or one part of a run's saved
    split. A file that cannot be read stops the work, naming every one (on_bad_image="error"),
    or is left out and listed ("skip")."""

    root: str | Path
    format: str = "auto"
    label_mode: str = "default"
    split_manifest: str | Path | None = None
    part: str = "test"
    on_bad_image: str = "error"
    labels: str | Path | None = None  # the label files' folder, where not beside the images

    def read(self) -> tuple[SampleSet, Sequence[Sample]]:
        """The dataset with every file checked, and the samples to score."""
        dataset = read_checked(
            self.root, self.format, self.label_mode, self.on_bad_image, self.labels
        )
        if self.split_manifest:
            return dataset, load_manifest(dataset, Path(self.split_manifest)).parts()[self.part]
        return dataset, dataset.samples


def left_out_of(dataset: SampleSet) -> dict[str, Any]:
    """{"left_out": the unreadable files, each with why} where on_bad_image="skip" left
    any out; {} otherwise (a result's key, for eval.json and compare.json alike)."""
    return {"left_out": [vars(b) for b in dataset.left_out]} if dataset.left_out else {}


def labelled_data(data: LabelledData | str | Path, **options: Any) -> LabelledData:
    """`data` as LabelledData: a folder path with the options above, or one as it is."""
    if isinstance(data, LabelledData):
        if options:
            raise TypeError(f"options {sorted(options)} given twice: they are in {data}")
        return data
    return LabelledData(data, **options)


def evaluate_bundle(
    bundle: str | Path, data: LabelledData | str | Path, **options: Any
) -> dict[str, Any]:
    """Score a bundle on labelled images, the way the Inspector will see them on the line.
    `data`: LabelledData, or its folder with LabelledData's other fields as options. Every
    file is checked first; with on_bad_image="skip" the bad ones are left out and listed
    under "left_out"."""
    data = labelled_data(data, **options)
    inspector = Inspector(bundle, raw_maps=True)
    dataset, samples = data.read()
    task = get_task(inspector.task)
    scored = task.evaluate_bundle(inspector, samples, str(data.root))
    return {"task": task.name, **scored, **left_out_of(dataset)}
