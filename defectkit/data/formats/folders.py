"""Readers of image-level layouts: ELPV, MVTec AD, image + mask pairs, class folders, the
class in the file name."""

from __future__ import annotations

from pathlib import Path

from defectkit.data.formats.base import (
    _child,
    _require,
    _subdirs,
    images_in,
    register_format,
)
from defectkit.data.samples import DatasetError, Sample


# ---------------------------------------------------------------- ELPV solar cells
@register_format(
    "elpv",
    "labels.csv (path probability type) beside images/",
    lambda r: (r / "labels.csv").is_file(),
    priority=10,
    label_modes=("default", "binary", "4class"),
)
def read_elpv(root: Path, label_mode: str) -> list[Sample]:
    """Binary (the default): defect probability >= 0.5 is "ng"; 4class: the probability
    itself (p000, p033, p067, p100)."""
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
    "mvtec",
    "train/good/*.png, test/<defect>/*.png, ground_truth/<defect>/*_mask.png",
    _is_mvtec,
    priority=10,
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


def read_masks_apart(images: Path, masks: Path, label_mode: str) -> list[Sample]:
    """Images in one folder, a mask of the same stem (or <stem>_mask) for each in another;
    the image's label: "defect" where its mask marks one, else "ok"."""
    found = {p.stem: p for p in images_in(masks)}
    samples = []
    for image in images_in(images):
        mask = found.get(image.stem) or found.get(f"{image.stem}_mask")
        if mask is None:
            raise DatasetError(
                f"{image} has no mask in {masks}: add "
                f"{image.stem}.png (all zero for a defect-free image)"
            )
        samples.append(Sample(image, "defect" if _marks_a_defect(mask) else "ok", mask=mask))
    return samples


@register_format(
    "image_mask",
    "<class>/[Imgs/]<id>.jpg with mask <id>.png beside it "
    "(magnetic tile), or images/ + masks/ (or ground_truth/) with equal stems",
    lambda r: ((r / "images").is_dir() and (r / "masks").is_dir()) or len(_class_pair_dirs(r)) >= 1,
    priority=60,
    labels_in=lambda folder: bool(images_in(folder)),
    read_apart=read_masks_apart,
)
def read_image_mask(root: Path, label_mode: str) -> list[Sample]:
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return read_masks_apart(root / "images", root / "masks", label_mode)
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


def _marks_a_defect(mask: Path) -> bool:
    """Whether a mask holds a defect pixel (value > 127, as masks are read everywhere); an
    unreadable mask counts as a defect here and is named by the up-front file check."""
    from PIL import Image

    try:
        with Image.open(mask) as opened:
            return opened.convert("L").getextrema()[1] > 127
    except OSError:
        return True


def _common_prefix(names: list[str]) -> str:
    """A shared 'XX_' prefix of class folder names (magnetic tile's MT_)."""
    heads = {n.split("_", 1)[0] + "_" for n in names if "_" in n}
    return heads.pop() if len(heads) == 1 and all("_" in n for n in names) else ""


# ---------------------------------------------------------------- class folders
@register_format(
    "class_folders",
    "<class>/*.jpg, one folder per class (ImageFolder)",
    lambda r: sum(1 for d in _subdirs(r) if images_in(d)) >= 2,
    priority=70,
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
    priority=80,
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
