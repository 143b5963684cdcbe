"""Readers of box layouts: DeepPCB (tested image + template + boxes), Pascal VOC, YOLO."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from defectkit.data.formats.base import (
    LabelProblems,
    _child,
    _image_size,
    _require,
    register_format,
)
from defectkit.data.images import is_image
from defectkit.data.samples import Box, Sample

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
    priority=20,
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


def _is_voc(annotations: Path | None, images: Path | None) -> bool:
    """Both folders, and xml files in the first (a COCO annotations/ + images/ is not VOC)."""
    if annotations is None or images is None or not images.is_dir():
        return False
    return annotations.is_dir() and any(annotations.glob("*.xml"))


def read_voc_apart(image_dir: Path, annotations: Path, label_mode: str) -> list[Sample]:
    """Image label: the most frequent object class in its xml ("ok" when it has none)."""
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


@register_format(
    "voc",
    "Annotations/*.xml beside JPEGImages/ (or IMAGES/), or the xml in a folder of their own",
    lambda r: _is_voc(*_voc_dirs(r)),
    priority=20,
    labels_in=lambda folder: any(folder.glob("*.xml")),
    read_apart=read_voc_apart,
)
def read_voc(root: Path, label_mode: str) -> list[Sample]:
    annotations, image_dir = _voc_dirs(root)
    assert annotations is not None and image_dir is not None
    return read_voc_apart(image_dir, annotations, label_mode)


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


def _yolo_label_files(folder: Path) -> bool:
    return any(p.name != "classes.txt" for p in folder.rglob("*.txt"))


def read_yolo_apart(images: Path, labels: Path, label_mode: str) -> list[Sample]:
    """<images>/<sub>/<stem>.<ext> with <labels>/<sub>/<stem>.txt; class names from
    classes.txt or data.yaml beside the labels, above them or above the images."""
    places = (labels, labels.parent, images.parent)
    names = next((found for d in places if (found := _yolo_names(d))), [])
    return _read_yolo(images, labels, names)


@register_format(
    "yolo",
    "images/ + labels/ (class cx cy w h, or class x1 y1 x2 y2 ... polygons), "
    "classes.txt or data.yaml with names; or the txt files in a folder of their own",
    lambda r: (r / "images").is_dir() and (r / "labels").is_dir(),
    priority=20,
    labels_in=_yolo_label_files,
    read_apart=read_yolo_apart,
)
def read_yolo(root: Path, label_mode: str) -> list[Sample]:
    return _read_yolo(root / "images", root / "labels", _yolo_names(root))


def _read_yolo(image_root: Path, label_root: Path, names: list[str]) -> list[Sample]:
    samples = []
    problems = LabelProblems("YOLO")
    for image in sorted(p for p in image_root.rglob("*") if is_image(p)):
        label_file = label_root / image.relative_to(image_root).with_suffix(".txt")
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
    clip = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
    polygon: tuple[tuple[float, float], ...] = ()
    if len(values) == 4:
        cx, cy, w, h = values
        if w <= 0 or h <= 0:
            raise ValueError(f"box of width {w:g} and height {h:g} has zero area")
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    else:  # a segment: its box for detection, its points for masks
        xs, ys = values[0::2], values[1::2]
        x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        if x2 <= x1 or y2 <= y1:
            raise ValueError("polygon encloses no area (its points lie on one line)")
        polygon = tuple((clip(x) * width, clip(y) * height) for x, y in zip(xs, ys, strict=True))
    corners = (clip(x1) * width, clip(y1) * height, clip(x2) * width, clip(y2) * height)
    return Box(*corners, label=name, polygon=polygon)
