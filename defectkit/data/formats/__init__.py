"""Readers that turn a dataset folder into Samples, one per layout plants, papers and
labelling tools use (`defectkit data formats` lists them). The registry and the entry point
are in base.py; the readers register on import: folders.py (image-level layouts), boxes.py
(DeepPCB, VOC, YOLO), annotations.py (COCO JSON, labelme, CVAT)."""

from defectkit.data.formats import annotations, boxes, folders  # noqa: F401  (they register)
from defectkit.data.formats.base import (
    _READERS,
    LabelProblems,
    detect_format,
    images_in,
    list_formats,
    read_dataset,
    register_format,
)

__all__ = [
    "_READERS",
    "LabelProblems",
    "detect_format",
    "images_in",
    "list_formats",
    "read_dataset",
    "register_format",
]
