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
