"""The format registry and what every reader shares: a reader is registered with a detector
of its layout and a priority (specific layouts are tried before generic ones), and
`read_dataset(root)` picks the first layout whose detector matches, or says what it found
and which layouts it knows."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectkit.data.images import is_image
from defectkit.data.samples import DatasetError, Sample, SampleSet
from defectkit.registry import Registry


@dataclass(frozen=True)
class Reader:
    name: str
    layout: str  # what the folder must look like, shown in errors
    detect: Callable[[Path], bool]
    read: Callable[[Path, str], list[Sample]]  # (root, label_mode) -> samples
    priority: int  # lower is tried first: specific layouts before generic folders
    label_modes: tuple[str, ...] = ("default",)  # data.label_mode values it understands
    # the layout with its label files in a folder of their own: whether a folder holds this
    # reader's label files, and (images folder, labels folder, label_mode) -> samples
    labels_in: Callable[[Path], bool] | None = None
    read_apart: Callable[[Path, Path, str], list[Sample]] | None = None


_READERS: Registry[Reader] = Registry("dataset format")


def register_format(
    name: str,
    layout: str,
    detect: Callable[[Path], bool],
    priority: int = 50,
    label_modes: tuple[str, ...] = ("default",),
    labels_in: Callable[[Path], bool] | None = None,
    read_apart: Callable[[Path, Path, str], list[Sample]] | None = None,
):
    def decorator(read: Callable[[Path, str], list[Sample]]):
        reader = Reader(name, layout, detect, read, priority, label_modes, labels_in, read_apart)
        _READERS.add(name, reader)
        return read

    return decorator


# names a folder of label files goes by beside its images folder (labelme's label/, YOLO's
# labels/, VOC's Annotations/, masks/, MVTec's ground_truth/)
LABEL_FOLDERS = ("labels", "label", "annotations", "masks", "mask", "ground_truth", "gt")


def labels_apart(root: Path, labels: Path | None = None) -> tuple[Reader, Path, Path] | None:
    """Images in one folder, their label files in another: the folder `labels` names, else
    a sibling of `root` named as in LABEL_FOLDERS, else one such folder inside `root` beside
    a folder of images. Returns (reader, images folder, labels folder), or None."""
    if labels is not None:
        pairs = [(root, labels)]
    elif images_in(root):
        pairs = [(root, root.parent / name) for name in LABEL_FOLDERS]
    else:
        pairs = [
            (sub, other)
            for other in _subdirs(root)
            if other.name.lower() in LABEL_FOLDERS
            for sub in _subdirs(root)
            if sub != other and images_in(sub)
        ]
    for images, notes in pairs:
        notes = _child(notes.parent, notes.name) or notes  # any case: Labels/, Annotations/
        if not notes.is_dir() or notes.resolve() == images.resolve():
            continue
        for reader in _in_order():
            if reader.labels_in is not None and reader.labels_in(notes):
                return reader, images, notes
    return None


def _unlabelled(samples: list[Sample], labels: Path) -> int:
    """Images with no file of their stem (or <stem>_mask) in the labels folder."""
    stems = {p.stem for p in labels.rglob("*") if p.is_file()}
    return sum(s.image.stem not in stems and f"{s.image.stem}_mask" not in stems for s in samples)


def _in_order() -> list[Reader]:
    return sorted(_READERS.values(), key=lambda r: r.priority)


def list_formats() -> dict[str, str]:
    return {reader.name: reader.layout for reader in _in_order()}


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image(p))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _child(folder: Path, *names: str) -> Path | None:
    """The first existing child among `names`, matched case-insensitively."""
    if not folder.is_dir():
        return None
    by_lower = {p.name.lower(): p for p in folder.iterdir()}
    for name in names:
        if name.lower() in by_lower:
            return by_lower[name.lower()]
    return None


class LabelProblems:
    """Every fault in a dataset's label files, gathered so that one error names them all."""

    def __init__(self, layout: str):
        self.layout, self.lines = layout, []

    def add(self, where: Path, line_no: int | None, message: str) -> None:
        self.lines.append(f"  {where}{f':{line_no}' if line_no else ''}: {message}")

    def raise_any(self) -> None:
        if self.lines:
            raise DatasetError(
                f"{len(self.lines)} problem(s) in the {self.layout} label files:\n"
                + "\n".join(self.lines)
                + "\nFix these lines (or remove the files) and read the dataset again."
            )


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height from the header, without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def elpv_root() -> Path:
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or spec.origin is None:
        raise DatasetError(
            "the ELPV images come from a pip package: pip install elpv-dataset "
            "(or run `defectkit demo --synthetic`, which needs no data)"
        )
    return Path(spec.origin).parent / "data"


def _require(path: Path, what: str, named_in: Path) -> Path:
    if not path.is_file():
        raise DatasetError(
            f"{named_in} names {what} {path}, which does not exist: "
            "restore the file or remove its entry"
        )
    return path


def detect_format(root: Path) -> str:
    for reader in _in_order():
        if reader.detect(root):
            return reader.name
    subdirs = [d.name for d in _subdirs(root)]
    n_images = len(images_in(root))
    known = "\n".join(f"  {r.name}: {r.layout}" for r in _in_order())
    raise DatasetError(
        f"could not tell the layout of {root}: found {len(subdirs)} folder(s) "
        f"({', '.join(subdirs[:8]) or 'none'}) and {n_images} image(s) at the top.\n"
        f"Known layouts:\n{known}\nArrange the folder as one of these, or name the layout "
        "with --set data.format=NAME."
    )


def read_dataset(
    root: str | Path,
    format: str = "auto",
    label_mode: str = "default",
    labels: str | Path | None = None,
) -> SampleSet:
    """Read a dataset folder (or "elpv" for the pip-installed ELPV set) into a SampleSet.
    `labels`: the folder of its label files where they are not beside the images (found
    by itself when it is a sibling: labels/, label/, annotations/, masks/, ground_truth/)."""
    root = elpv_root() if str(root) == "elpv" else Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"dataset folder {root} does not exist; pass the folder that holds "
            "the images (--set data.root=PATH)"
        )
    if labels:
        return _read_apart(root, label_mode, *_named_labels(root, format, labels))
    try:
        name = detect_format(root) if format == "auto" else format
    except DatasetError:
        found = labels_apart(root)  # images here, their labels in a sibling folder
        if found is None:
            raise
        return _read_apart(root, label_mode, *found)
    dataset = _read(root, name, label_mode)
    if format == "auto":  # a layout named with data.format is read as asked
        try:
            refuse_nonsense(dataset)
        except DatasetError:
            found = labels_apart(root)  # the labels are beside the folder, not in the names
            if found is None:
                raise
            return _read_apart(root, label_mode, *found)
    return dataset


def _checked_reader(root: Path, name: str, label_mode: str) -> Reader:
    if name not in _READERS:
        raise DatasetError(f"unknown dataset format {name!r}; known: {', '.join(_READERS)}")
    modes = _READERS[name].label_modes
    if label_mode not in modes:
        raise DatasetError(
            f"data.label_mode={label_mode!r} means nothing to the {name!r} layout of {root} "
            f"(it reads: {', '.join(modes)}): drop the setting or --set data.label_mode="
            f"{modes[0]}"
        )
    return _READERS[name]


def _dataset(root: Path, name: str, samples: list[Sample], **labels: Any) -> SampleSet:
    if not samples:
        raise DatasetError(
            f"{root} read as {name!r} holds no images; expected {_READERS[name].layout}"
        )
    classes = tuple(sorted({s.label for s in samples if s.label is not None}))
    return SampleSet(root=root, layout=name, samples=tuple(samples), classes=classes, **labels)


def _read(root: Path, name: str, label_mode: str) -> SampleSet:
    return _dataset(root, name, _checked_reader(root, name, label_mode).read(root, label_mode))


def _read_apart(
    root: Path, label_mode: str, reader: Reader, images: Path, notes: Path
) -> SampleSet:
    """The images of `images` with their label files in `notes`; the SampleSet says where
    the labels came from and how many images have none there."""
    _checked_reader(root, reader.name, label_mode)
    assert reader.read_apart is not None
    samples = reader.read_apart(images, notes, label_mode)
    return _dataset(
        root, reader.name, samples, labels=str(notes), unlabelled=_unlabelled(samples, notes)
    )


def _named_labels(root: Path, format: str, labels: str | Path) -> tuple[Reader, Path, Path]:
    """The labels folder named by data.labels / --labels, with the reader of its files (of
    the named format, where one is named)."""
    folder = Path(labels).expanduser()
    if not folder.is_dir():
        raise DatasetError(
            f"data.labels={labels}: no such folder; name the folder that holds the label "
            "files (labelme .json, YOLO .txt, VOC .xml or mask images)"
        )
    found = labels_apart(root, folder)
    if found is None or format not in ("auto", found[0].name):
        known = [r.name for r in _in_order() if r.labels_in is not None]
        raise DatasetError(
            f"{folder} holds no label files that one of {known} reads"
            + (f" as {format!r}" if format != "auto" else "")
            + f" for the images of {root}: name the folder of the images' labelme .json, "
            "YOLO .txt, VOC .xml or mask files"
        )
    return found


MANY = 10  # classes: below this a class of one image may be meant (a tiny test set)


def refuse_nonsense(dataset: SampleSet) -> None:
    """A detected layout whose reading cannot be what the folder means is refused, with the
    reason and the likely fix: class names that are really file names (most classes of one
    image), a class per image."""
    counts = dataset.counts()
    singles = sorted(c for c, n in counts.items() if n == 1)
    where = f"{dataset.root} read as {dataset.layout!r}"
    force = f"(to read it so all the same: --set data.format={dataset.layout})"
    if dataset.layout == "name_prefix" and len(counts) >= MANY and len(singles) > len(counts) / 2:
        raise DatasetError(
            f"{where} gives {len(counts)} classes for {len(dataset)} images, {len(singles)} "
            f"of them with one image (e.g. {', '.join(singles[:3])}): the part of the file "
            "names before their last '_' is no class here. If the labels are files in another "
            "folder (labelme JSON, YOLO txt, VOC xml, masks), name it with --labels PATH "
            "(data.labels) or point at the folder above both; images of one kind go in one "
            f"class folder each {force}"
        )
    named_as_labels = sorted(c for c in counts if c.lower() in LABEL_FOLDERS)
    if dataset.layout == "class_folders" and named_as_labels:
        raise DatasetError(
            f"{where} takes {named_as_labels} for a class, but that is a name label files go "
            "by: the images' labels are in it, not more images of a class. Point at the "
            f"folder of the images and name the labels with --labels PATH {force}"
        )
    if dataset.layout == "class_folders" and len(counts) >= MANY and len(singles) == len(counts):
        raise DatasetError(
            f"{where} gives every one of its {len(counts)} class folders a single image: a "
            "folder per image is no class. Put the images of each class in one folder "
            f"(<class>/*.jpg), or point at the folder that holds the dataset {force}"
        )
