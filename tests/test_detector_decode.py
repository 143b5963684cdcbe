"""The detector's inference graph decodes boxes as torchvision does: RetinaNet's hand-written
broadcast decoder against torchvision's BoxCoder, and for every architecture the graph's
boxes after the score floor and NMS against the torchvision model's own post-processing."""

import pytest
import torch

from defectkit.config import DetectConfig, ModelConfig
from defectkit.models.detector import _decode_deltas, build_detector, dense_outputs, select_boxes
from defectkit.predictions import Region, match_boxes

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


@pytest.mark.parametrize(
    ("arch", "floor", "noise"),
    [("retinanet", 0.05, 0.05), ("fcos", 0.1, 0.05), ("faster_rcnn", 0.85, 0.1)],
)
def test_the_graph_keeps_the_boxes_torchvision_postprocessing_keeps(arch, floor, noise):
    """Untrained weights with noise in the head, a floor that keeps 7 to 20 boxes an image:
    the boxes torchvision's own eval-mode forward returns and the graph's boxes after
    select_boxes are the same (class, IoU >= 0.9, score within 1e-4), none left over. For
    Faster R-CNN that takes the graph's proposals, RoIAlign levels and per-class boxes to
    be torchvision's."""
    torch.manual_seed(0)
    config = DetectConfig(arch=arch, fpn_channels=32, head_convs=1, score_floor=floor)
    model, _, _ = build_detector(
        ModelConfig(backbone="resnet18", pretrained=False), config, 3, 64, pretrained=False
    )
    model.eval()
    with torch.no_grad():
        head = model.roi_heads if arch == "faster_rcnn" else model.head
        for p in head.parameters():  # spread the scores apart: fewer near-ties
            p.add_(torch.randn_like(p) * noise)
        images = torch.randn(2, 3, 64, 64)
        image, *kept = select_boxes(
            *dense_outputs(model, images), config.score_floor, config.nms_iou, 100
        )
        expected = model(list(images))
    compared = 0
    for n, theirs in enumerate(expected):
        ours = _regions(*(part[image == n] for part in kept))
        reference = _regions(theirs["boxes"], theirs["scores"], theirs["labels"])
        assert reference, "torchvision kept no box: raise the noise or lower the floor"
        pairs, extra, missing = match_boxes(ours, reference)
        assert missing == [], f"{len(missing)} of torchvision's {len(reference)} boxes not kept"
        assert extra == [], f"{len(extra)} boxes torchvision does not keep"
        compared += len(pairs)
    assert compared >= 15


class _Selection(torch.nn.Module):
    def forward(self, boxes: torch.Tensor, scores: torch.Tensor):
        return select_boxes(boxes, scores, 0.3, 0.5, 6, top_k=40)


def test_box_selection_in_the_onnx_graph_keeps_the_eager_boxes(tmp_path):
    """select_boxes exported (ONNX NonMaxSuppression, class-aware, inside the graph) keeps
    the boxes eager torch keeps, matched by class and IoU, in the same order rules: image
    first, best score first, at most 6 per image; an image with nothing above the floor
    keeps nothing; a batch of one gives that image's own boxes."""
    import onnxruntime as ort

    from defectkit.models.detector import ONNX_TRANSLATIONS

    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(3, 60, 2, generator=generator) * 40
    boxes = torch.cat([corners, corners + 4 + torch.rand(3, 60, 2, generator=generator) * 20], -1)
    scores = torch.rand(3, 60, 2, generator=generator)
    scores[1] *= 0.2  # below the floor everywhere
    path = tmp_path / "select.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(
        _Selection(),
        (boxes, scores),
        str(path),
        input_names=["every_box", "every_score"],
        output_names=["batch_index", "boxes", "scores", "labels"],
        dynamic_shapes=({0: batch}, {0: batch}),
        opset_version=18,
        dynamo=True,
        custom_translation_table=ONNX_TRANSLATIONS,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for count in (3, 1):
        inputs = boxes[:count], scores[:count]
        eager = [t.numpy() for t in _Selection()(*inputs)]
        exported = session.run(
            None, {"every_box": inputs[0].numpy(), "every_score": inputs[1].numpy()}
        )
        for found in (eager, exported):
            images, _, image_scores, _ = found
            assert list(images) == sorted(images)
            for n in range(count):
                own = image_scores[images == n]
                assert list(own) == sorted(own, reverse=True)
                assert len(own) == (0 if n == 1 else 6)
                assert (own > 0.3).all()
        for n in range(count):
            ours, theirs = (
                _regions(*(torch.as_tensor(part[found[0] == n]) for part in found[1:]))
                for found in (eager, exported)
            )
            pairs, extra, missing = match_boxes(ours, theirs)
            assert not extra and not missing and len(pairs) == len(ours)


@pytest.mark.parametrize(
    ("batch", "classes", "floor", "most"), [(1, 1, 0.0, 100), (3, 4, 0.3, 5), (2, 6, 0.05, 2)]
)
def test_class_nms_keeps_per_image_and_class_what_torchvision_nms_keeps(
    batch, classes, floor, most
):
    from torchvision.ops import nms

    generator = torch.Generator().manual_seed(batch * 10 + classes)
    candidates = 60
    corner = torch.rand(batch, candidates, 2, generator=generator) * 100
    size = torch.rand(batch, candidates, 2, generator=generator) * 40 + 2
    boxes = torch.cat([corner, corner + size], -1)
    scores = torch.rand(batch, classes, candidates, generator=generator)
    kept = torch.ops.defectkit.class_nms(boxes, scores, 0.5, floor, most)
    assert kept.shape[1] == 3 and kept.dtype == torch.int64
    wanted = set()
    for image in range(batch):
        for k in range(classes):
            above = torch.nonzero(scores[image, k] > floor).flatten()
            keep = nms(boxes[image, above], scores[image, k, above], 0.5)[:most]
            wanted |= {(image, k, int(i)) for i in above[keep]}
    assert {tuple(row) for row in kept.tolist()} == wanted
    # rows grouped by image then class, each group best first
    image, k, index = kept.unbind(1)
    group = image * classes + k
    assert bool((group[1:] >= group[:-1]).all())
    same = group[1:] == group[:-1]
    ordered = scores[image, k, index]
    assert bool((ordered[1:][same] <= ordered[:-1][same]).all())
    # nothing above the floor: no rows
    assert torch.ops.defectkit.class_nms(boxes, scores, 0.5, 1.0, most).shape == (0, 3)
