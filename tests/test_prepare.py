"""The Inspector's numpy / PIL preparation (data/prepare.py) gives the numbers training's
torchvision evaluation transform gives, and its window cut and NMS are torchvision's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import batched_nms
from torchvision.transforms.v2 import functional as TF

from defectkit.data.prepare import class_nms, prepare_image, split_windows
from defectkit.data.tiles import split_tiles
from defectkit.data.transforms import eval_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.numerics
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("resize", ["squash", "pad", "tile"])
@pytest.mark.parametrize("height,width,size", [(200, 120, 96), (50, 70, 128), (96, 96, 96)])
def test_numpy_preparation_matches_the_torch_transform(interpolation, resize, height, width, size):
    """Shrinking, enlarging and leaving alone, squashed, padded or tiled: within 1e-4 of
    torchvision on normalised values (float rounding of two implementations)."""
    pixels = np.random.default_rng(height + width).integers(0, 256, (height, width, 3))
    image = Image.fromarray(pixels.astype(np.uint8))
    options = {"size": size, "mean": MEAN, "std": STD, "interpolation": interpolation}
    wanted = eval_transform(**options, resize=resize)(TF.pil_to_tensor(image)).numpy()
    got = prepare_image(image, **options, resize=resize)
    assert got.dtype == np.float32 and got.shape == wanted.shape
    np.testing.assert_allclose(got, wanted, atol=1e-4 * np.abs(wanted).max())


def test_a_greyscale_image_becomes_three_equal_channels():
    image = Image.fromarray(np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8))
    x = prepare_image(image, size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert x.shape == (3, 32, 32)
    np.testing.assert_array_equal(x[0], x[1])
    np.testing.assert_array_equal(x[1], x[2])


@pytest.mark.parametrize("height,width", [(64, 160), (40, 50), (130, 130)])
def test_windows_are_the_torch_windows(height, width):
    image = torch.rand(3, height, width)
    tiles, origins = split_tiles(image, 64)
    windows, where = split_windows(image.numpy(), 64)
    assert where == origins
    np.testing.assert_array_equal(windows, tiles.numpy())


def test_numpy_nms_keeps_what_torchvision_keeps():
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 200, (300, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 60, (300, 2))], 1).astype(np.float32)
    scores = rng.permutation(300).astype(np.float32) / 300  # no ties: one answer
    labels = rng.integers(0, 3, 300)
    for iou in (0.3, 0.5, 0.7):
        wanted = batched_nms(
            torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), iou
        )
        assert class_nms(boxes, scores, labels, iou).tolist() == wanted.tolist()
