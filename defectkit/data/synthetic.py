"""Small procedural defect images for tests and examples: a textured surface, with a
scratch (a thin bright line) or a spot (a dark blob) painted on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SYNTHETIC_CLASSES = ("ok", "scratch", "spot")


def surface(rng: np.random.Generator, size: int) -> np.ndarray:
    """Brushed-metal-like texture: noise smeared along the rows."""
    noise = rng.normal(0, 12, (size, size + 8))
    rows = np.stack([noise[:, i : i + size] for i in range(8)]).mean(0)
    return np.clip(128 + rows + rng.normal(0, 3, (size, size)), 0, 255)


def draw_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Paint one defect of `kind` in place; returns its binary mask."""
    size = image.shape[0]
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros_like(image, dtype=bool)
    if kind == "scratch":
        x0, y0 = rng.uniform(0.15, 0.85, 2) * size
        angle = rng.uniform(0, np.pi)
        distance = np.abs((xx - x0) * np.sin(angle) - (yy - y0) * np.cos(angle))
        along = np.abs((xx - x0) * np.cos(angle) + (yy - y0) * np.sin(angle))
        mask = (distance < max(1.0, size / 48)) & (along < size * 0.3)
        image[mask] = 230
    elif kind == "spot":
        cx, cy = rng.uniform(0.25, 0.75, 2) * size
        radius = rng.uniform(0.06, 0.12) * size
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
        image[mask] = 40
    elif kind != "ok":
        raise ValueError(f"unknown synthetic defect {kind!r}; use {SYNTHETIC_CLASSES}")
    return mask


def make_classify_set(
    root: Path,
    per_class: int = 20,
    size: int = 64,
    seed: int = 0,
    classes: tuple[str, ...] = SYNTHETIC_CLASSES,
) -> Path:
    """Class folders root/<class>/<class>_<i>.png of greyscale images."""
    rng = np.random.default_rng(seed)
    for kind in classes:
        folder = Path(root) / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = surface(rng, size)
            draw_defect(image, kind, rng)
            Image.fromarray(image.astype(np.uint8), mode="L").save(folder / f"{kind}_{i}.png")
    return Path(root)


def make_mask_set(root: Path, per_class: int = 6, size: int = 64, seed: int = 0) -> Path:
    """Magnetic-tile style: root/MT_<Class>/Imgs/<id>.jpg with a <id>.png mask beside it."""
    rng = np.random.default_rng(seed)
    for kind in SYNTHETIC_CLASSES:
        folder = Path(root) / f"MT_{kind.capitalize()}" / "Imgs"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = surface(rng, size)
            mask = draw_defect(image, kind, rng)
            Image.fromarray(image.astype(np.uint8), mode="L").save(folder / f"{kind}{i}.jpg")
            Image.fromarray((mask * 255).astype(np.uint8), mode="L").save(folder / f"{kind}{i}.png")
    return Path(root)


def make_paired_set(root: Path, count: int = 24, size: int = 64, seed: int = 0) -> Path:
    """DeepPCB-style: a defect-free template of random bright traces and a tested image of
    the same part where a trace piece is missing or an extra one added, so that a defect
    looks like an ordinary trace unless it is compared with the template. Files
    group00000/00000/<id>_test.jpg, <id>_temp.jpg, group00000/00000_not/<id>.txt (boxes
    x1,y1,x2,y2,type), and trainval.txt / test.txt listing 3/4 and 1/4 of them."""
    rng = np.random.default_rng(seed)
    images, notes = Path(root) / "group00000" / "00000", Path(root) / "group00000" / "00000_not"
    images.mkdir(parents=True, exist_ok=True)
    notes.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        template = np.full((size, size), 40.0) + rng.normal(0, 4, (size, size))
        for _ in range(6):
            x, y = rng.integers(0, size - 12, 2)
            w, h = (
                (rng.integers(12, size // 2), 4)
                if rng.random() < 0.5
                else (4, rng.integers(12, size // 2))
            )
            template[y : y + h, x : x + w] = 200
        tested = template.copy()
        x, y = rng.integers(4, size - 12, 2)
        if i % 2:  # an extra piece of trace
            tested[y : y + 4, x : x + 8] = 200
            kind, height = 5, 4
        else:  # a bite out of the board where a trace may be
            tested[y : y + 8, x : x + 8] = 40
            kind, height = 1, 8
        name = f"{i:08d}"
        Image.fromarray(np.clip(template, 0, 255).astype(np.uint8)).save(
            images / f"{name}_temp.jpg"
        )
        Image.fromarray(np.clip(tested, 0, 255).astype(np.uint8)).save(images / f"{name}_test.jpg")
        (notes / f"{name}.txt").write_text(f"{x},{y},{x + 8},{y + height},{kind}\n")
        lines.append(f"group00000/00000/{name}.jpg group00000/00000_not/{name}.txt")
    cut = count * 3 // 4
    (Path(root) / "trainval.txt").write_text("\n".join(lines[:cut]) + "\n")
    (Path(root) / "test.txt").write_text("\n".join(lines[cut:]) + "\n")
    return Path(root)


def make_box_set(
    root: Path, count: int = 32, size: int = 96, seed: int = 0, ok_share: float = 0.25
) -> Path:
    """A Pascal VOC folder (Annotations/*.xml beside JPEGImages/*.png) of greyscale surfaces
    with one to two boxed defects each: "spot" (a dark square) and "scratch" (a bright
    horizontal bar); `ok_share` of the images carry none."""
    rng = np.random.default_rng(seed)
    images, notes = Path(root) / "JPEGImages", Path(root) / "Annotations"
    images.mkdir(parents=True, exist_ok=True)
    notes.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = surface(rng, size)
        objects = []
        wanted = 0 if rng.random() < ok_share else int(rng.integers(1, 3))
        for _ in range(wanted):
            kind = ("spot", "scratch")[int(rng.integers(2))]
            w, h = (int(size * 0.2), int(size * 0.2)) if kind == "spot" else (int(size * 0.4), 5)
            x, y = int(rng.integers(2, size - w - 2)), int(rng.integers(2, size - h - 2))
            if any(
                x < b[2] + 2 and b[0] < x + w + 2 and y < b[3] + 2 and b[1] < y + h + 2
                for _, b in objects
            ):
                continue  # keep defects apart
            image[y : y + h, x : x + w] = 40 if kind == "spot" else 230
            objects.append((kind, (x, y, x + w, y + h)))
        _write_voc(images, notes, f"part_{i:03d}", image, objects)
    return Path(root)


def make_crack_set(
    root: Path,
    count: int = 48,
    width: int = 48,
    height: int = 128,
    seed: int = 0,
    ok_share: float = 0.2,
    thickness: int = 4,
) -> Path:
    """A Pascal VOC folder of tall greyscale strips with long thin cracks: one or two dark
    lines `thickness` px wide, "crack" along the strip (40 to 90% of its height: 1:12 to
    1:30 at the defaults) or across it (70 to 80% of its width, about 1:9); `ok_share` of the
    strips carry none. What a detector that learns from box centres alone misses: a thin
    line leaves most locations of a coarse pyramid level outside its box."""
    rng = np.random.default_rng(seed)
    images, notes = Path(root) / "JPEGImages", Path(root) / "Annotations"
    images.mkdir(parents=True, exist_ok=True)
    notes.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = surface(rng, max(width, height))[:height, :width]
        objects = []
        wanted = 0 if rng.random() < ok_share else int(rng.integers(1, 3))
        for _ in range(wanted):
            if rng.random() < 0.7:  # along the strip
                w, h = thickness, int(height * rng.uniform(0.4, 0.9))
            else:  # across it, clear of its edges
                w, h = int(width * rng.uniform(0.7, 0.8)), thickness
            x, y = int(rng.integers(3, width - w - 2)), int(rng.integers(3, height - h - 2))
            if any(
                x < b[2] + 4 and b[0] < x + w + 4 and y < b[3] + 4 and b[1] < y + h + 4
                for _, b in objects
            ):
                continue  # keep cracks apart
            image[y : y + h, x : x + w] = rng.uniform(40, 60)
            objects.append(("crack", (x, y, x + w, y + h)))
        _write_voc(images, notes, f"strip_{i:03d}", image, objects)
    return Path(root)


def _write_voc(
    images: Path, notes: Path, name: str, image: np.ndarray, objects: list[tuple[str, tuple]]
) -> None:
    """One greyscale image and its Pascal VOC annotation (x1 y1 x2 y2 boxes)."""
    from xml.sax.saxutils import escape

    Image.fromarray(image.astype(np.uint8), mode="L").save(images / f"{name}.png")
    height, width = image.shape
    boxes = "".join(
        f"<object><name>{escape(kind)}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for kind, (x1, y1, x2, y2) in objects
    )
    (notes / f"{name}.xml").write_text(
        f"<annotation><filename>{name}.png</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>1</depth></size>{boxes}</annotation>"
    )
