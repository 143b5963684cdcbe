"""Readers of the files labelling tools export: COCO JSON (one file per split, as CVAT,
Roboflow and Label Studio write it: `_annotations.coco.json` beside the images, or
`annotations/*.json` beside `images/`), labelme JSON (one per image; parsed here, the GPL
labelme package is not needed) and CVAT XML ("CVAT for images 1.1"). Boxes and polygons
alike: every object becomes a Box, a polygon's box keeping its points for masks. Every
problem of every file is gathered into one error, with the file and the object."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

from defectkit.data.formats.base import LabelProblems, images_in, register_format
from defectkit.data.images import is_image
from defectkit.data.samples import Box, Sample

COCO_FILE = "_annotations.coco.json"


def _label_of(boxes: list[Box]) -> str:
    """An image's label: its most frequent object class, "ok" without objects."""
    counts = Counter(b.label for b in boxes)
    return counts.most_common(1)[0][0] if counts else "ok"


def _box(
    label: str,
    points: list[tuple[float, float]],
    width: float,
    height: float,
    where: str,
    problems: LabelProblems,
    path: Path,
    polygon: bool,
) -> Box | None:
    """A Box around `points` (two corners, or a polygon's points), checked against the
    image: fewer than 3 polygon points, zero area or a box outside the image is a problem."""
    if polygon and len(points) < 3:
        problems.add(path, None, f"{where}: a polygon needs 3 points or more, not {len(points)}")
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
    if x2 <= x1 or y2 <= y1:
        problems.add(path, None, f"{where}: ({x1:g}, {y1:g}, {x2:g}, {y2:g}) encloses no area")
        return None
    if width and height and (x1 < -1 or y1 < -1 or x2 > width + 1 or y2 > height + 1):
        problems.add(
            path,
            None,
            f"{where}: ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the {width:g}x{height:g} "
            "image",
        )
        return None
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, width or x2), min(y2, height or y2))
    return Box(*clipped, label=label, polygon=tuple(points) if polygon else ())


# ---------------------------------------------------------------- COCO JSON
def _coco_files(root: Path) -> list[tuple[Path, Path]]:
    """(annotation file, its image folder) pairs: split folders each holding
    _annotations.coco.json, the root holding one, or annotations/*.json beside images/."""
    pairs = [(f, f.parent) for f in sorted(root.glob(f"*/{COCO_FILE}"))]
    if (root / COCO_FILE).is_file():
        pairs.append((root / COCO_FILE, root))
    notes = root / "annotations"
    if notes.is_dir() and (root / "images").is_dir():
        pairs += [(f, root / "images") for f in sorted(notes.glob("*.json"))]
    return pairs


def _coco_points(annotation: dict[str, Any]) -> tuple[list[tuple[float, float]], bool]:
    """The largest polygon of a segmentation, else the bbox's corners."""
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list) and segmentation and isinstance(segmentation[0], list):
        ring = max(segmentation, key=len)
        return [(float(x), float(y)) for x, y in zip(ring[0::2], ring[1::2], strict=False)], True
    x, y, w, h = (float(v) for v in annotation.get("bbox", (0, 0, 0, 0)))
    return [(x, y), (x + w, y + h)], False


@register_format(
    "coco",
    f"COCO JSON: <split>/{COCO_FILE} beside that split's images, or annotations/*.json "
    "beside images/",
    lambda r: bool(_coco_files(r)),
    priority=30,
)
def read_coco(root: Path, label_mode: str) -> list[Sample]:
    samples: list[Sample] = []
    problems = LabelProblems("COCO JSON")
    for path, folder in _coco_files(root):
        try:
            data = json.loads(path.read_text())
            images = {int(i["id"]): i for i in data["images"]}
            names = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
            annotations = data.get("annotations", [])
        except (ValueError, KeyError, TypeError) as error:
            problems.add(path, None, f"not a COCO annotation file ({error!r})")
            continue
        boxes: dict[int, list[Box]] = {i: [] for i in images}
        for n, annotation in enumerate(annotations, 1):
            where = f"annotation {annotation.get('id', n)}"
            image_id, category = annotation.get("image_id"), annotation.get("category_id")
            if image_id not in images:
                problems.add(path, None, f"{where} names image id {image_id}, which is not listed")
                continue
            if category not in names:
                problems.add(path, None, f"{where} names category id {category}, not listed")
                continue
            info = images[image_id]
            points, polygon = _coco_points(annotation)
            width, height = float(info.get("width", 0)), float(info.get("height", 0))
            box = _box(names[category], points, width, height, where, problems, path, polygon)
            if box is not None:
                boxes[image_id].append(box)
        split = folder.name if folder != root and folder.name != "images" else None
        for image_id, info in sorted(images.items()):
            image = folder / str(info.get("file_name", ""))
            if not image.is_file():
                problems.add(
                    path, None, f"image {info.get('file_name')!r} does not exist in {folder}"
                )
                continue
            meta = {"split": _split_name(split)} if split else {}
            found = tuple(boxes[image_id])
            samples.append(Sample(image, _label_of(list(found)), boxes=found, meta=meta))
    problems.raise_any()
    return samples


def _split_name(folder: str) -> str:
    """Roboflow's split folders: train, valid, test (`split.method=official` reads these)."""
    return {"valid": "val", "validation": "val"}.get(folder, folder)


# ---------------------------------------------------------------- labelme JSON
def _labelme_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(json, image) pairs: labelme writes <stem>.json beside <stem>.<ext>."""
    pairs = []
    for note in sorted(root.rglob("*.json")):
        images = [p for p in note.parent.glob(f"{note.stem}.*") if is_image(p)]
        if images:
            pairs.append((note, images[0]))
    return pairs


def _labelme_pairs_apart(images: Path, notes: Path) -> list[tuple[Path, Path]]:
    """(json, image) pairs across two folders: <notes>/<sub>/<stem>.json for
    <images>/<sub>/<stem>.<ext> (or <images>/<stem>.<ext>)."""
    pairs = []
    for note in sorted(notes.rglob("*.json")):
        places = (images / note.relative_to(notes).parent, images)
        found = [p for d in places if d.is_dir() for p in d.glob(f"{note.stem}.*") if is_image(p)]
        if found:
            pairs.append((note, found[0]))
    return pairs


def _holds_labelme(notes: list[Path]) -> bool:
    for note in notes[:3]:
        try:
            if "shapes" in json.loads(note.read_text()):
                return True
        except ValueError:
            continue
    return False


def _is_labelme(root: Path) -> bool:
    return _holds_labelme([note for note, _ in _labelme_pairs(root)])


def _labelme_samples(pairs: list[tuple[Path, Path]], others: set[Path]) -> list[Sample]:
    """Samples of the labelled images and of `others` (images without a json: OK images)."""
    problems = LabelProblems("labelme")
    labelled: dict[Path, tuple[Box, ...]] = {}
    for note, image in pairs:
        try:
            data = json.loads(note.read_text())
            shapes = data["shapes"]
        except (ValueError, KeyError) as error:
            problems.add(note, None, f"not a labelme file ({error!r})")
            continue
        width, height = float(data.get("imageWidth") or 0), float(data.get("imageHeight") or 0)
        boxes = []
        for n, shape in enumerate(shapes, 1):
            kind, label = shape.get("shape_type", "polygon"), str(shape.get("label", "defect"))
            where = f"shape {n} ({label}, {kind})"
            points = [(float(x), float(y)) for x, y in shape.get("points", [])]
            if kind not in ("polygon", "rectangle"):
                problems.add(note, None, f"{where}: only polygons and rectangles are read")
                continue
            box = _box(label, points, width, height, where, problems, note, kind == "polygon")
            if box is not None:
                boxes.append(box)
        labelled[image] = tuple(boxes)
    samples = []
    for image in sorted({*labelled, *others}):
        boxes = labelled.get(image, ())
        samples.append(Sample(image, _label_of(list(boxes)), boxes=boxes))
    problems.raise_any()
    return samples


def read_labelme_apart(images: Path, notes: Path, label_mode: str) -> list[Sample]:
    """Images in one folder (every image: those without a json are OK images), their labelme
    JSON in another (a published `data/` + `label/`)."""
    others = {p for p in images.rglob("*") if p.is_file() and is_image(p)}
    return _labelme_samples(_labelme_pairs_apart(images, notes), others)


@register_format(
    "labelme",
    "labelme: <stem>.json (shapes: polygon, rectangle) beside each <stem>.jpg, or in a label "
    "folder of its own (data/ + label/); images without a json are OK images",
    _is_labelme,
    priority=40,
    labels_in=lambda folder: _holds_labelme(sorted(folder.rglob("*.json"))),
    read_apart=read_labelme_apart,
)
def read_labelme(root: Path, label_mode: str) -> list[Sample]:
    pairs = _labelme_pairs(root)
    others = {p for d in {image.parent for _, image in pairs} for p in images_in(d)}
    return _labelme_samples(pairs, others)


# ---------------------------------------------------------------- CVAT XML
def _cvat_file(root: Path) -> Path | None:
    for name in ("annotations.xml", "annotation.xml"):
        if (root / name).is_file():
            return root / name
    return None


@register_format(
    "cvat",
    "CVAT for images 1.1: annotations.xml (box, polygon) beside images/ (or the images)",
    lambda r: _cvat_file(r) is not None,
    priority=30,
)
def read_cvat(root: Path, label_mode: str) -> list[Sample]:
    path = _cvat_file(root)
    assert path is not None
    problems = LabelProblems("CVAT XML")
    try:
        tree = ET.parse(path).getroot()
    except ET.ParseError as error:
        problems.add(path, None, f"not valid XML ({error})")
        problems.raise_any()
    folder = root / "images" if (root / "images").is_dir() else root
    samples = []
    for entry in tree.iter("image"):
        name = entry.get("name", "")
        image = folder / name
        if not image.is_file():
            problems.add(path, None, f"image {name!r} does not exist in {folder}")
            continue
        width, height = float(entry.get("width", 0)), float(entry.get("height", 0))
        boxes = []
        for n, shape in enumerate(entry, 1):
            label = shape.get("label", "defect")
            where = f"{name} {shape.tag} {n} ({label})"
            if shape.tag == "box":
                try:
                    corners = [
                        (float(shape.get("xtl")), float(shape.get("ytl"))),
                        (float(shape.get("xbr")), float(shape.get("ybr"))),
                    ]
                except (TypeError, ValueError):
                    problems.add(path, None, f"{where}: xtl, ytl, xbr, ybr must be numbers")
                    continue
                box = _box(label, corners, width, height, where, problems, path, False)
            elif shape.tag == "polygon":
                try:
                    points = [
                        tuple(float(v) for v in p.split(","))
                        for p in shape.get("points", "").split(";")
                        if p
                    ]
                except ValueError:
                    problems.add(path, None, f"{where}: points must be 'x,y;x,y;...'")
                    continue
                box = _box(label, points, width, height, where, problems, path, True)
            else:
                continue  # tags, points and polylines mark no area
            if box is not None:
                boxes.append(box)
        samples.append(Sample(image, _label_of(boxes), boxes=tuple(boxes)))
    problems.raise_any()
    return samples
