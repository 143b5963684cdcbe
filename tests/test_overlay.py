"""The overlay's jet colours are matplotlib's (a service draws them without importing it)."""

import numpy as np
from PIL import Image

from defectkit.overlay import jet, overlay


def test_jet_gives_matplotlibs_colours():
    import matplotlib

    values = np.linspace(0, 1, 1001)
    expected = matplotlib.colormaps["jet"](values)[:, :3]
    # matplotlib looks its colours up in 256 steps: within one step of the exact curve
    assert np.abs(jet(values) - expected).max() <= 2 * 4 / 255
    assert np.allclose(jet(np.array([0.0, 0.5, 1.0])), expected[[0, 500, 1000]], atol=0.02)
    assert jet(np.array([-1.0, 2.0])).tolist() == [[0.0, 0.0, 0.5], [0.5, 0.0, 0.0]]  # clipped


def test_the_overlay_keeps_the_surface_below_0_3_and_colours_the_defect():
    grey = Image.fromarray(np.full((8, 8), 101, np.uint8))
    heat = np.zeros((8, 8), np.float32)
    heat[2:4, 2:4] = 1.0  # defect: 60% dark red over the grey
    out = np.asarray(overlay(grey, heat))
    assert (out[0, 0] == 101).all()
    assert out[2, 2].tolist() == [117, 40, 40]  # 0.4 * 101 + 0.6 * 127.5, 0.4 * 101
