"""The format registry and what every reader shares: a reader is registered with a detector
of its layout and a priority (specific layouts are tried before generic ones), and
`read_dataset(root)` picks the first layout whose detector matches, or says what it found
and which layouts it knows."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


_READERS: Registry[Reader] = Registry("dataset format")


def register_format(
    name: str,
    layout: str,
    detect: Callable[[Path], bool],
    priority: int = 50,
    label_modes: tuple[str, ...] = ("default",),
):
    def decorator(read: Callable[[Path, str], list[Sample]]):
        _READERS.add(name, Reader(name, layout, detect, read, priority, label_modes))
        return read

    return decorator


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


def read_dataset(root: str | Path, format: str = "auto", label_mode: str = "default") -> SampleSet:
    """Read a dataset folder (or "elpv" for the pip-installed ELPV set) into a SampleSet."""
    root = elpv_root() if str(root) == "elpv" else Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"dataset folder {root} does not exist; pass the folder that holds "
            "the images (--set data.root=PATH)"
        )
    name = detect_format(root) if format == "auto" else format
    if name not in _READERS:
        raise DatasetError(f"unknown dataset format {name!r}; known: {', '.join(_READERS)}")
    modes = _READERS[name].label_modes
    if label_mode not in modes:
        raise DatasetError(
            f"data.label_mode={label_mode!r} means nothing to the {name!r} layout of {root} "
            f"(it reads: {', '.join(modes)}): drop the setting or --set data.label_mode="
            f"{modes[0]}"
        )
    samples = _READERS[name].read(root, label_mode)
    if not samples:
        raise DatasetError(
            f"{root} read as {name!r} holds no images; expected {_READERS[name].layout}"
        )
    classes = tuple(sorted({s.label for s in samples if s.label is not None}))
    return SampleSet(root=root, layout=name, samples=tuple(samples), classes=classes)
