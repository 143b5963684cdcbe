"""A heat map over its image, as report.html, `predict --maps` and the operator page show it.
The jet colour map is matplotlib's own segment data, interpolated here with numpy: a service
that draws overlays imports no plotting library (tests/test_overlay.py holds it to
matplotlib's colours)."""

from __future__ import annotations

import numpy as np
from PIL import Image

# matplotlib's `jet` (matplotlib/_cm.py, _jet_data): (position, value) anchors per channel
JET = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
)


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) -> RGB in [0, 1], one more axis of 3 at the end."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return np.stack([np.interp(values, [p for p, _ in c], [v for _, v in c]) for c in JET], axis=-1)


def overlay(image: Image.Image, heat_map: np.ndarray, max_side: int = 0) -> Image.Image:
    """The normalised heat map (0.5 = threshold) over the image, both at the map's size: jet
    colours fading in from 0.3 and fully on (60%) from 0.6, so that defect-free areas keep
    showing the surface. Shrunk to `max_side` when given."""
    image = image.convert("RGB").resize(heat_map.shape[::-1])
    colours = jet(heat_map)
    alpha = 0.6 * np.clip((heat_map - 0.3) / 0.3, 0, 1)[..., None]
    blended = (1 - alpha) * np.asarray(image, dtype=np.float32) + alpha * colours * 255
    out = Image.fromarray(blended.round().astype(np.uint8))
    if max_side and max(out.size) > max_side:
        out.thumbnail((max_side, max_side))
    return out
