"""The Sample record every reader produces and every task consumes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """A dataset folder that cannot be read as asked; the message says what to fix."""


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels of the original image, with its class name; a box
    read from a polygon (COCO, labelme, CVAT, YOLO segments) keeps the polygon's (x, y)
    points, and masks are drawn from them."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str = "defect"
    polygon: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Sample:
    """One image and what is known about it.

    `label` is the image-level class (a defect type, "ok"/"ng", or "good" for anomaly data);
    `mask` a pixel mask (non-zero = defect); `reference` an aligned defect-free image of the
    same part (DeepPCB template); `group` keeps near-duplicates on one side of a split;
    `meta` holds reader-specific facts (ELPV cell type, defect probability).
    """

    image: Path
    label: str | None = None
    mask: Path | None = None
    boxes: tuple[Box, ...] = ()
    reference: Path | None = None
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def key(self, name: str) -> str:
        """A stratification key: "label", "name_prefix" (the file name before its last "_",
        NEU's class), or a meta field."""
        if name == "label":
            return str(self.label)
        if name == "name_prefix":
            return self.image.stem.rsplit("_", 1)[0]
        return str(self.meta.get(name, ""))


# class names that mean "defect-free" (any case): a classifier's OK class, the anomaly task's
# good images; an image + mask layout calls its empty-mask images "ok"
OK_NAMES = ("ok", "good", "free", "normal", "pass", "defect-free", "defect_free", "no_defect")


def ok_class(classes: Sequence[str]) -> str | None:
    """The defect-free class among `classes`, by name; None when none is named so."""
    return next((c for c in classes if c.lower() in OK_NAMES), None)


@dataclass(frozen=True)
class SampleSet:
    """The samples of one dataset, with the layout that produced them and the class order."""

    root: Path
    layout: str
    samples: tuple[Sample, ...]
    classes: tuple[str, ...]
    # samples left out because a file of theirs is unreadable (data.on_bad_image=skip):
    # data.checks.BadFile records, each naming the file and why
    left_out: tuple[Any, ...] = ()
    # the folder the label files came from where it is not the images' own ("" beside them),
    # and how many images have no label file there
    labels: str = ""
    unlabelled: int = 0

    def counts(self) -> dict[str, int]:
        counter = Counter(s.label for s in self.samples)
        return {name: counter.get(name, 0) for name in self.classes}

    def __len__(self) -> int:
        return len(self.samples)
