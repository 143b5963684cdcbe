"""Readers that turn a dataset folder into Samples, one per layout plants and papers use.

Each reader is registered with a detector; `read_dataset(root)` picks the first layout whose
detector matches, or says what it found and which layouts it knows.
"""

from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from defectkit.data.images import is_image
from defectkit.data.samples import Box, DatasetError, Sample, SampleSet
from defectkit.registry import Registry


@dataclass(frozen=True)
class Reader:
    name: str
    layout: str  # what the folder must look like, shown in errors
    detect: Callable[[Path], bool]
    read: Callable[[Path, str], list[Sample]]  # (root, label_mode) -> samples


_READERS: Registry[Reader] = Registry("dataset format")


def register_format(name: str, layout: str, detect: Callable[[Path], bool]):
    def decorator(read: Callable[[Path, str], list[Sample]]):
        _READERS.add(name, Reader(name, layout, detect, read))
        return read

    return decorator


def list_formats() -> dict[str, str]:
    return {name: reader.layout for name, reader in _READERS.items()}


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


def _require(path: Path, what: str, named_in: Path) -> Path:
    if not path.is_file():
        raise DatasetError(
            f"{named_in} names {what} {path}, which does not exist: "
            "restore the file or remove its entry"
        )
    return path


# ---------------------------------------------------------------- ELPV solar cells
def elpv_root() -> Path:
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or spec.origin is None:
        raise DatasetError(
            "the ELPV images come from a pip package: pip install elpv-dataset "
            "(or run `defectkit demo --synthetic`, which needs no data)"
        )
    return Path(spec.origin).parent / "data"


@register_format(
    "elpv",
    "labels.csv (path probability type) beside images/",
    lambda r: (r / "labels.csv").is_file(),
)
def read_elpv(root: Path, label_mode: str) -> list[Sample]:
    """Binary: defect probability >= 0.5 is "ng"; 4class: the probability itself (p0..p100)."""
    labels = root / "labels.csv"
    samples = []
    for line_no, line in enumerate(labels.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise DatasetError(
                f"{labels}:{line_no}: expected 'path probability type', got {line!r}"
            )
        path, probability, cell_type = parts[0], float(parts[1]), parts[2]
        if label_mode == "4class":
            label = f"p{round(probability * 100):03d}"
        else:
            label = "ng" if probability >= 0.5 else "ok"
        image = _require(root / path, "image", labels)
        samples.append(Sample(image, label, meta={"type": cell_type, "probability": probability}))
    return samples


# ---------------------------------------------------------------- MVTec AD
def _is_mvtec(root: Path) -> bool:
    return (root / "train" / "good").is_dir() and (root / "test").is_dir()


@register_format(
    "mvtec", "train/good/*.png, test/<defect>/*.png, ground_truth/<defect>/*_mask.png", _is_mvtec
)
def read_mvtec(root: Path, label_mode: str) -> list[Sample]:
    samples = [Sample(p, "good", meta={"split": "train"}) for p in images_in(root / "train/good")]
    for defect_dir in _subdirs(root / "test"):
        for image in images_in(defect_dir):
            mask = None
            if defect_dir.name != "good":
                mask = root / "ground_truth" / defect_dir.name / f"{image.stem}_mask.png"
                if not mask.is_file():
                    raise DatasetError(
                        f"{image} has no mask {mask}: MVTec AD keeps one per "
                        "defect image under ground_truth/<defect>/"
                    )
            samples.append(Sample(image, defect_dir.name, mask=mask, meta={"split": "test"}))
    return samples


# ---------------------------------------------------------------- DeepPCB test + template
DEEPPCB_TYPES = {1: "open", 2: "short", 3: "mousebite", 4: "spur", 5: "copper", 6: "pin-hole"}


def _read_box_file(path: Path) -> tuple[Box, ...]:
    boxes = []
    for line in path.read_text().splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) == 5:
            x1, y1, x2, y2, kind = (int(float(v)) for v in parts)
            boxes.append(Box(x1, y1, x2, y2, DEEPPCB_TYPES.get(kind, str(kind))))
    return tuple(boxes)


@register_format(
    "deeppcb",
    "trainval.txt/test.txt listing group*/<G>/<id>.jpg (files <id>_test.jpg "
    "and <id>_temp.jpg) and group*/<G>_not/<id>.txt boxes",
    lambda r: (r / "test.txt").is_file() and any(r.glob("group*")),
)
def read_deeppcb(root: Path, label_mode: str) -> list[Sample]:
    samples = []
    for split, listing in (("train", root / "trainval.txt"), ("test", root / "test.txt")):
        if not listing.is_file():
            continue
        for line in listing.read_text().splitlines():
            if not line.strip():
                continue
            image_entry, box_entry = line.split()[:2]
            stem = root / image_entry[: -len(Path(image_entry).suffix)]
            image = _require(stem.with_name(stem.name + "_test.jpg"), "tested image", listing)
            reference = _require(stem.with_name(stem.name + "_temp.jpg"), "template", listing)
            boxes = _read_box_file(_require(root / box_entry, "box file", listing))
            samples.append(
                Sample(
                    image,
                    "defect" if boxes else "ok",
                    boxes=boxes,
                    reference=reference,
                    group=image.parent.name,
                    meta={"split": split},
                )
            )
    return samples


# ---------------------------------------------------------------- Pascal VOC
def _voc_dirs(root: Path) -> tuple[Path | None, Path | None]:
    return _child(root, "Annotations"), _child(root, "JPEGImages", "IMAGES", "images")


@register_format(
    "voc",
    "Annotations/*.xml beside JPEGImages/ (or IMAGES/)",
    lambda r: all(d is not None and d.is_dir() for d in _voc_dirs(r)),
)
def read_voc(root: Path, label_mode: str) -> list[Sample]:
    """Image label: the most frequent object class in its xml ("ok" when it has none)."""
    annotations, image_dir = _voc_dirs(root)
    assert annotations is not None and image_dir is not None
    samples = []
    problems = LabelProblems("Pascal VOC")
    for xml_path in sorted(annotations.glob("*.xml")):
        try:
            tree = ET.parse(xml_path).getroot()
        except ET.ParseError as error:
            problems.add(xml_path, None, f"not valid VOC xml ({error})")
            continue
        filename = tree.findtext("filename") or f"{xml_path.stem}.jpg"
        image = image_dir / filename
        if not image.is_file():
            matches = [p for p in image_dir.glob(f"{xml_path.stem}.*") if is_image(p)]
            if not matches:
                problems.add(xml_path, None, f"names image {image}, which does not exist")
                continue
            image = matches[0]
        boxes = _voc_boxes(tree, xml_path, image, problems)
        counts = Counter(b.label for b in boxes)
        label = counts.most_common(1)[0][0] if counts else "ok"
        samples.append(Sample(image, label, boxes=tuple(boxes)))
    problems.raise_any()
    return samples


def _voc_boxes(tree: ET.Element, xml_path: Path, image: Path, problems: LabelProblems) -> list:
    """The boxes of one VOC file; a box of zero area or outside its image is a problem (VOC
    counts pixels from 1, so xmax may equal the width)."""
    size = tree.find("size")
    try:
        width, height = int(float(size.findtext("width"))), int(float(size.findtext("height")))
    except (AttributeError, TypeError, ValueError):
        width, height = 0, 0
    if width <= 0 or height <= 0:
        width, height = _image_size(image)
    boxes = []
    for number, obj in enumerate(tree.iter("object"), 1):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        name = (obj.findtext("name") or "defect").strip()
        where = f"object {number} ({name})"
        try:
            x1, y1, x2, y2 = (float(bb.findtext(k, "")) for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            problems.add(xml_path, None, f"{where}: a bndbox coordinate is not a number")
            continue
        if x2 <= x1 or y2 <= y1:
            problems.add(
                xml_path, None, f"{where}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has zero area"
            )
        elif x1 < 0 or y1 < 0 or x2 > width + 1 or y2 > height + 1:
            problems.add(
                xml_path,
                None,
                f"{where}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the "
                f"{width}x{height} image",
            )
        else:
            boxes.append(Box(x1, y1, min(x2, width), min(y2, height), label=name))
    return boxes


# ---------------------------------------------------------------- YOLO txt
def _yolo_names(root: Path) -> list[str]:
    classes = root / "classes.txt"
    if classes.is_file():
        return [n.strip() for n in classes.read_text().splitlines() if n.strip()]
    data_yaml = _child(root, "data.yaml", "dataset.yaml")
    if data_yaml is not None:
        import yaml

        names = (yaml.safe_load(data_yaml.read_text()) or {}).get("names", [])
        return list(names.values()) if isinstance(names, dict) else list(names)
    return []


@register_format(
    "yolo",
    "images/ + labels/ (class cx cy w h, or class x1 y1 x2 y2 ... polygons), "
    "classes.txt or data.yaml with names",
    lambda r: (r / "images").is_dir() and (r / "labels").is_dir(),
)
def read_yolo(root: Path, label_mode: str) -> list[Sample]:
    names = _yolo_names(root)
    samples = []
    problems = LabelProblems("YOLO")
    for image in sorted(p for p in (root / "images").rglob("*") if is_image(p)):
        label_file = root / "labels" / image.relative_to(root / "images").with_suffix(".txt")
        boxes = []
        if label_file.is_file():
            try:
                width, height = _image_size(image)
            except OSError:
                width, height = 1, 1  # the image check names the unreadable image
            for line_no, line in enumerate(label_file.read_text().splitlines(), 1):
                try:
                    box = _yolo_box(line, names, width, height)
                except ValueError as error:
                    problems.add(label_file, line_no, str(error))
                    continue
                if box is not None:
                    boxes.append(box)
        counts = Counter(b.label for b in boxes)
        label = counts.most_common(1)[0][0] if counts else "ok"
        samples.append(Sample(image, label, boxes=tuple(boxes)))
    problems.raise_any()
    return samples


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height from the header, without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def _yolo_box(line: str, names: list[str], width: int, height: int) -> Box | None:
    """One label line (a box or a polygon, coordinates normalised to 0..1) as a pixel box;
    a ValueError says what is wrong with the line."""
    parts = line.split()
    if not parts:
        return None
    if len(parts) < 5 or len(parts) % 2 == 0:
        points = (len(parts) - 1) // 2
        raise ValueError(
            f"{line.strip()!r} is neither 'class cx cy w h' nor a polygon 'class x1 y1 x2 y2 "
            f"x3 y3 ...' (a polygon needs at least 3 points, this has {points})"
        )
    try:
        index, values = int(parts[0]), [float(v) for v in parts[1:]]
    except ValueError:
        raise ValueError(
            f"{line.strip()!r}: the class id and coordinates must be numbers"
        ) from None
    if names and not 0 <= index < len(names):
        raise ValueError(
            f"class id {index} is outside the {len(names)} names of classes.txt / data.yaml "
            f"(0..{len(names) - 1}): fix the id or add the class name"
        )
    if index < 0:
        raise ValueError(f"class id {index} is negative")
    if any(v < -0.01 or v > 1.01 for v in values):
        raise ValueError(
            f"coordinates {', '.join(f'{v:g}' for v in values)} are not normalised to 0..1 "
            "(YOLO divides pixels by the image width and height)"
        )
    name = names[index] if names else str(index)
    if len(values) == 4:
        cx, cy, w, h = values
        if w <= 0 or h <= 0:
            raise ValueError(f"box of width {w:g} and height {h:g} has zero area")
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    else:
        xs, ys = values[0::2], values[1::2]
        x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        if x2 <= x1 or y2 <= y1:
            raise ValueError("polygon encloses no area (its points lie on one line)")
    clip = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
    return Box(clip(x1) * width, clip(y1) * height, clip(x2) * width, clip(y2) * height, name)


# ---------------------------------------------------------------- image + mask pairs
def _mask_pairs(folder: Path) -> list[tuple[Path, Path | None]]:
    """Images with a same-stem .png mask beside them (magnetic tile keeps both in Imgs/)."""
    files = images_in(folder)
    pngs = {p.stem: p for p in files if p.suffix.lower() == ".png"}
    return [(p, pngs.get(p.stem)) for p in files if p.suffix.lower() != ".png"]


def _class_pair_dirs(root: Path) -> list[Path]:
    return [
        d
        for d in _subdirs(root)
        if (_child(d, "Imgs") or d).is_dir()
        and any(m for _, m in _mask_pairs(_child(d, "Imgs") or d))
    ]


@register_format(
    "image_mask",
    "<class>/[Imgs/]<id>.jpg with mask <id>.png beside it "
    "(magnetic tile), or images/ + masks/ with equal stems",
    lambda r: ((r / "images").is_dir() and (r / "masks").is_dir()) or len(_class_pair_dirs(r)) >= 1,
)
def read_image_mask(root: Path, label_mode: str) -> list[Sample]:
    if (root / "images").is_dir() and (root / "masks").is_dir():
        masks = {p.stem: p for p in images_in(root / "masks")}
        samples = []
        for image in images_in(root / "images"):
            mask = masks.get(image.stem) or masks.get(f"{image.stem}_mask")
            if mask is None:
                raise DatasetError(
                    f"{image} has no mask in {root / 'masks'}: add "
                    f"{image.stem}.png (all zero for a defect-free image)"
                )
            samples.append(Sample(image, "defect", mask=mask))
        return samples
    class_dirs = _class_pair_dirs(root)
    prefix = _common_prefix([d.name for d in class_dirs])
    samples = []
    for class_dir in class_dirs:
        folder = _child(class_dir, "Imgs") or class_dir
        for image, mask in _mask_pairs(folder):
            if mask is None:
                raise DatasetError(
                    f"{image} has no mask {image.with_suffix('.png')}: add one "
                    "(all zero for a defect-free image) or move the image out"
                )
            samples.append(Sample(image, class_dir.name[len(prefix) :], mask=mask))
    return samples


def _common_prefix(names: list[str]) -> str:
    """A shared 'XX_' prefix of class folder names (magnetic tile's MT_)."""
    heads = {n.split("_", 1)[0] + "_" for n in names if "_" in n}
    return heads.pop() if len(heads) == 1 and all("_" in n for n in names) else ""


# ---------------------------------------------------------------- class folders
@register_format(
    "class_folders",
    "<class>/*.jpg, one folder per class (ImageFolder)",
    lambda r: sum(1 for d in _subdirs(r) if images_in(d)) >= 2,
)
def read_class_folders(root: Path, label_mode: str) -> list[Sample]:
    samples = []
    for class_dir in _subdirs(root):
        images = images_in(class_dir)
        if not images:
            raise DatasetError(f"class folder {class_dir} holds no images: add images or remove it")
        samples.extend(Sample(p, class_dir.name) for p in images)
    return samples


# ---------------------------------------------------------------- class in the file name
def _name_prefix(path: Path) -> str | None:
    return path.stem.rsplit("_", 1)[0] if "_" in path.stem else None


def _is_name_prefix(root: Path) -> bool:
    images = images_in(root)
    prefixes = {_name_prefix(p) for p in images}
    return len(images) >= 2 and None not in prefixes and len(prefixes) >= 2


@register_format(
    "name_prefix",
    "a flat folder of <class>_<n>.jpg (NEU: crazing_12.jpg, Cr_1.bmp)",
    _is_name_prefix,
)
def read_name_prefix(root: Path, label_mode: str) -> list[Sample]:
    samples = []
    for image in images_in(root):
        label = _name_prefix(image)
        if label is None:
            raise DatasetError(
                f"{image}: no class prefix in the name; rename it <class>_<n>"
                f"{image.suffix} or move it out of {root}"
            )
        samples.append(Sample(image, label))
    return samples


# ---------------------------------------------------------------- entry point
def detect_format(root: Path) -> str:
    for name, reader in _READERS.items():
        if reader.detect(root):
            return name
    subdirs = [d.name for d in _subdirs(root)]
    n_images = len(images_in(root))
    known = "\n".join(f"  {name}: {reader.layout}" for name, reader in _READERS.items())
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
    samples = _READERS[name].read(root, label_mode)
    if not samples:
        raise DatasetError(
            f"{root} read as {name!r} holds no images; expected {_READERS[name].layout}"
        )
    classes = tuple(sorted({s.label for s in samples if s.label is not None}))
    return SampleSet(root=root, layout=name, samples=tuple(samples), classes=classes)
