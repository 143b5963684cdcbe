"""FCOS's ATSS assignment (detect.assign=atss): each box's locations chosen by its own IoU
bar, checked against the rule worked out box by box, and a detector that trains with it;
an image without boxes is background under every assignment."""

from __future__ import annotations

import statistics

import pytest
import torch

from defectkit.models.detector import ATSS_SCALE, ATSS_TOP, atss_matches, line_matches
from tests.pyramid import grid

STRIDES = (8, 16, 32, 64, 128)


def iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def worked_out(anchors: torch.Tensor, counts: list[int], box: list[float]) -> dict[int, float]:
    """ATSS for one box, by hand: per level the ATSS_TOP nearest locations; the bar the
    mean plus the (sample) standard deviation of their anchor boxes' IoUs; those at or
    above it with their centre inside the box -> {location: IoU}. Also returns the bar's
    distance from every candidate, to keep near-ties out of the comparison."""
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    candidates, start = [], 0
    for count in counts:
        rows = anchors[start : start + count].tolist()
        near = sorted(
            range(count),
            key=lambda i: (
                ((rows[i][0] + rows[i][2]) / 2 - centre[0]) ** 2
                + ((rows[i][1] + rows[i][3]) / 2 - centre[1]) ** 2
            ),
        )
        candidates += [start + i for i in near[:ATSS_TOP]]
        start += count
    overlaps = {}
    for i in candidates:
        x0, y0, x1, y1 = anchors[i].tolist()
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * ATSS_SCALE / 2
        overlaps[i] = (iou([cx - half, cy - half, cx + half, cy + half], box), cx, cy)
    values = [v for v, _, _ in overlaps.values()]
    bar = statistics.mean(values) + statistics.stdev(values)
    assert min(abs(v - bar) for v in values) > 1e-6  # no candidate on the bar itself
    return {
        i: v
        for i, (v, cx, cy) in overlaps.items()
        if v >= bar and box[0] < cx < box[2] and box[1] < cy < box[3]
    }


def test_atss_matches_each_box_by_its_own_bar():
    """Three boxes on a 256 px input (a small one, a large one, and one overlapping the
    large one), centres off the grid's symmetries so no two candidates tie on distance:
    atss_matches gives each box exactly the locations the rule worked out by hand gives
    it, a location two boxes want going to the one its anchor box overlaps most, and
    every box at least one location."""
    anchors, counts = grid(256, STRIDES)
    boxes = [
        [93.3, 81.9, 111.3, 101.9],  # 18 x 20: small
        [20.7, 130.2, 150.7, 246.2],  # 130 x 116: large
        [110.1, 150.6, 174.1, 210.6],  # 64 x 60: overlaps the large one
    ]
    matched = atss_matches(anchors, counts, torch.tensor(boxes))
    wanted = [worked_out(anchors, counts, box) for box in boxes]
    for j, mine in enumerate(wanted):
        assert mine, f"box {j} got no location"
        others = [wanted[k] for k in range(len(boxes)) if k != j]
        expected = {i for i, v in mine.items() if all(v > other.get(i, -1.0) for other in others)}
        assert set(torch.nonzero(matched == j).flatten().tolist()) == expected, j
    claimed = set().union(*wanted)
    assert set(torch.nonzero(matched >= 0).flatten().tolist()) == claimed
    # the small box is learned on the finest level, the large one not on it
    level = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    assert set(level[matched == 0].tolist()) == {0}
    assert 0 not in set(level[matched == 1].tolist())


@pytest.mark.parametrize(
    "matches",
    [atss_matches, lambda anchors, counts, boxes: line_matches(anchors, counts, boxes, 1.5)],
    ids=["atss", "line"],
)
def test_an_image_without_boxes_is_left_to_the_background(matches):
    anchors, counts = grid(128, STRIDES)
    matched = matches(anchors, counts, torch.zeros((0, 4)))
    assert matched.shape == (len(anchors),) and (matched == -1).all()


def test_a_detector_trained_with_atss_learns_from_its_locations():
    """build_detector with detect.assign=atss: the training losses come from the ATSS
    locations (finite, a box regression loss > 0) and a few steps on one image lower them;
    at inference it is FCOS as any other."""
    from defectkit.config import DetectConfig, ModelConfig
    from defectkit.models.detector import build_detector

    torch.manual_seed(0)
    model, _, _ = build_detector(
        ModelConfig(),
        DetectConfig(assign="atss", fpn_channels=64, head_convs=1),
        2,
        96,
        pretrained=False,
    )
    assert model.assign == "atss"
    images = torch.randn(2, 3, 96, 96)
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 40.0, 38.0]]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[50.0, 20.0, 62.0, 80.0]]), "labels": torch.tensor([1])},
    ]
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(8):
        losses = model(images, targets)
        assert all(torch.isfinite(v) for v in losses.values())
        assert losses["bbox_regression"] > 0
        total = sum(losses.values())
        totals.append(total.item())
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    assert totals[-1] < 0.8 * totals[0]
    model.eval()
    with torch.no_grad():
        (found,) = model(images[:1])
    assert set(found) >= {"boxes", "scores", "labels"}
