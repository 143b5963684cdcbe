"""The detector's inference graph decodes boxes as torchvision does: RetinaNet's hand-written
broadcast decoder against torchvision's BoxCoder, and for both architectures the graph's
boxes after the score floor and NMS against the torchvision model's own post-processing."""

import pytest
import torch

from defectkit.config import DetectConfig, ModelConfig
from defectkit.models.detector import _decode_deltas, build_detector, dense_outputs
from defectkit.predictions import Region, match_boxes
from defectkit.tasks.detect.deploy import keep_boxes

# every test here compares two backends or implementations (CI reruns them on other
# CPU kernels and on one thread)
pytestmark = pytest.mark.numerics


def test_retinanet_decoding_matches_torchvisions_box_coder():
    from torchvision.models.detection._utils import BoxCoder

    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(300, 2, generator=generator) * 200
    anchors = torch.cat([corners, corners + 4 + torch.rand(300, 2, generator=generator) * 60], 1)
    deltas = torch.randn(300, 4, generator=generator)
    deltas[:5, 2:] = 9.0  # huge log-size ratios: both clamp them the same way
    theirs = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)).decode_single(deltas, anchors)
    ours = _decode_deltas(deltas[None], anchors[None])[0]
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-3)
    # and broadcast over a batch: each image's deltas against the same anchors
    batch = torch.stack([deltas, deltas.flip(0)])
    decoded = _decode_deltas(batch, anchors[None])
    assert torch.allclose(decoded[1], BoxCoder((1.0,) * 4).decode_single(deltas.flip(0), anchors))


def _regions(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> list[Region]:
    return [
        Region(x1, y1, x2 - x1, y2 - y1, int((x2 - x1) * (y2 - y1)), s, str(c))
        for (x1, y1, x2, y2), s, c in zip(
            boxes.tolist(), scores.tolist(), labels.tolist(), strict=True
        )
    ]


@pytest.mark.parametrize(("arch", "floor"), [("retinanet", 0.05), ("fcos", 0.1)])
def test_the_graph_keeps_the_boxes_torchvision_postprocessing_keeps(arch, floor):
    """Untrained weights with noise in the head, a floor that keeps 8 to 15 boxes an image:
    the boxes torchvision's own eval-mode forward returns and the graph's boxes after
    keep_boxes are the same (class, IoU >= 0.9, score within 1e-4), none left over."""
    torch.manual_seed(0)
    config = DetectConfig(arch=arch, fpn_channels=32, head_convs=1, score_floor=floor)
    model, _, _ = build_detector(
        ModelConfig(backbone="resnet18", pretrained=False), config, 3, 64, pretrained=False
    )
    model.eval()
    with torch.no_grad():
        for p in model.head.parameters():  # spread the scores apart: fewer near-ties
            p.add_(torch.randn_like(p) * 0.05)
        images = torch.randn(2, 3, 64, 64)
        boxes, scores = dense_outputs(model, images)
        expected = model(list(images))
    compared = 0
    for n, theirs in enumerate(expected):
        kept = keep_boxes(boxes[n], scores[n], config.score_floor, config.nms_iou, 100)
        ours = _regions(*kept)
        reference = _regions(theirs["boxes"], theirs["scores"], theirs["labels"])
        assert reference, "torchvision kept no box: raise the noise or lower the floor"
        pairs, extra, missing = match_boxes(ours, reference)
        assert missing == [], f"{len(missing)} of torchvision's {len(reference)} boxes not kept"
        assert extra == [], f"{len(extra)} boxes torchvision does not keep"
        compared += len(pairs)
    assert compared >= 15
