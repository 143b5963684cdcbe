"""Box detectors: torchvision's detection models (FCOS, RetinaNet, Faster R-CNN; BSD licence)
on any timm trunk with offline ImageNet weights, through a feature pyramid (P3-P7).

The model trains the torchvision way (`model(images, targets)` returns its losses). For
inference, `dense_outputs` runs the trunk, the pyramid and the head on a batch of
fixed-size images and decodes every candidate's box: boxes (B, N, 4) in input pixels and
per-class scores (B, N, K). A one-stage model's candidates are its pyramid locations;
Faster R-CNN's are its proposals, each once per class (its box head gives each class its
own box), proposed inside the graph too (`two_stage_outputs`). `select_boxes` then keeps
the detections, inside the same graph:
the TOP_K best (location, class) pairs of each image, NMS within each image and class
(ONNX NonMaxSuppression in the exported file, torchvision's nms in eager), the score floor
and the `most` best of each image. Both backends run that whole graph and ONNX export writes
it: the ONNX file alone is a detector."""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import Any

import timm
import torch
from torch import Tensor, nn

from defectkit.config import DetectConfig, ModelConfig
from defectkit.models.backbones import (
    REFERENCE_STARTS,
    Preprocessing,
    check_backbone_name,
    early_stage_parameters,
    preprocessing_for,
    pretrained_trunk,
)

ARCHS = ("fcos", "retinanet", "faster_rcnn")
# FCOS: one point per location; its sizes are the pyramid strides (they set which level
# learns which box size). RetinaNet: three scales and three aspect ratios per location,
# smaller than torchvision's COCO default (32..512) for small defects. Faster R-CNN's
# proposals: one scale (detect.anchor_sizes) and three aspect ratios per location.
FCOS_SIZES = (8, 16, 32, 64, 128)
TOP_K = 1000  # (location, class) candidates per image before NMS (torchvision's default)
# Faster R-CNN, sized for a CPU: each level's RPN_TOP best anchors, NMS at RPN_NMS within
# each level, the RPN_KEEP best proposals of an image (torchvision's 1000, 0.7, 1000 at
# inference; RPN_KEEP_TRAIN of 2000 in training). The box head learns from ROI_SAMPLES of
# them an image (at most a quarter defects; torchvision's 512 for COCO's many objects) and
# pools ROI_SIZE x ROI_SIZE from P3-P6 (ROI_MAPS, strides ROI_STRIDES) by the FPN paper's
# level rule into two fully connected layers of BOX_HEAD (torchvision's 1024 on 256-channel
# maps; 256 keeps the head a fraction of Lite0's cost on 300 proposals)
RPN_TOP, RPN_NMS, RPN_KEEP, RPN_KEEP_TRAIN = 1000, 0.7, 300, 600
ROI_SAMPLES, ROI_SIZE, BOX_HEAD = 128, 7, 256
ROI_MAPS, ROI_STRIDES = ("0", "1", "2", "p6"), (8, 16, 32, 64)
# FCOS's training assignment of pyramid locations to boxes (detect.assign): centre is
# torchvision's (a location inside the box, within 1.5 strides of its centre); line follows
# the box's shape, for cracks and scratches of 1:10 and longer (line_matches); auto picks
# line where at least ELONGATED_SHARE of the training boxes are ELONGATED:1 or longer;
# atss is adaptive training sample selection (atss_matches)
ASSIGNS = ("auto", "centre", "line", "atss")
ELONGATED, ELONGATED_SHARE = 5.0, 0.25
# ATSS: each level's ATSS_TOP locations nearest a box's centre are its candidates, each
# seen as an anchor box ATSS_SCALE strides on a side (the paper's k=9 and scale 8)
ATSS_TOP, ATSS_SCALE = 9, 8


class PyramidBackbone(nn.Module):
    """timm trunk (strides 8, 16, 32) -> feature pyramid P3..P7, as torchvision's detection
    models want it: an OrderedDict of maps with `out_channels` each."""

    def __init__(self, trunk: nn.Module, channels: list[int], out_channels: int):
        from torchvision.ops.feature_pyramid_network import (
            FeaturePyramidNetwork,
            LastLevelP6P7,
        )

        super().__init__()
        self.trunk = trunk
        self.fpn = FeaturePyramidNetwork(
            channels, out_channels, extra_blocks=LastLevelP6P7(out_channels, out_channels)
        )
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.trunk(images)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def elongated_share(extents: list[tuple[float, float]]) -> float:
    """The share of boxes (width, height) that are ELONGATED:1 or longer (0 without boxes)."""
    long = [max(w, h) / max(min(w, h), 1.0) >= ELONGATED for w, h in extents]
    return sum(long) / len(long) if long else 0.0


def resolve_assign(assign: str, extents: list[tuple[float, float]]) -> str:
    """detect.assign for a training set whose boxes are (width, height) `extents`: auto
    becomes line where elongated boxes are common, else centre."""
    if assign not in ASSIGNS:
        raise ValueError(f"unknown detect.assign {assign!r}; use one of {ASSIGNS}")
    if assign != "auto":
        return assign
    return "line" if elongated_share(extents) >= ELONGATED_SHARE else "centre"


def assign_warning(assign: str, extents: list[tuple[float, float]]) -> str | None:
    """Why detect.assign=`assign` (as resolved) may miss this training set's boxes, or None:
    the centre and ATSS rules where elongated boxes are common (measured on synthetic 4 px
    cracks of 1:9 to 1:30 by benchmarks/thin_cracks.py)."""
    share = elongated_share(extents)
    if assign in ("centre", "atss") and share >= ELONGATED_SHARE:
        return (
            f"{share:.0%} of the training boxes are {ELONGATED:g}:1 or longer: "
            f"detect.assign={assign} gives such thin boxes few or no pyramid locations to "
            "learn from (benchmarks/RESULTS.md, thin cracks: the line rule against centre "
            "and atss); detect.assign=line or auto suits them"
        )
    return None


def line_matches(anchors: Tensor, per_level: list[int], boxes: Tensor, radius: float) -> Tensor:
    """Each location's box (an index into `boxes`, -1 for background), FCOS's rule made to
    follow the box's shape. A location takes a box when (1) its centre lies inside the box
    widened to one stride where the box is thinner than that (a 2 px crack still has one
    column of locations at a 16 px stride: FCOS's rule leaves it none three times in four);
    (2) it lies within `radius` strides of the box's centre, or within a quarter of the
    box's side along that side (a long crack is learned along its length, not at its middle
    alone); (3) half the box's longer side is in the location's level range, 4 to 8 strides
    (the first level from 0, the last without end): one range for all of a box's locations
    (FCOS's per-location farthest side splits a long box between two levels and leaves its
    middle to neither). Of several boxes a location takes the smallest."""
    if not len(boxes):  # an image without defects: every location is background
        return torch.full((len(anchors),), -1, dtype=torch.int64, device=anchors.device)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    stride = (anchors[:, 2] - anchors[:, 0])[:, None, None]  # (N, 1, 1)
    extent = (boxes[:, 2:] - boxes[:, :2])[None]  # (1, M, 2)
    offset = (centres[:, None] - (boxes[None, :, :2] + boxes[None, :, 2:]) / 2).abs()  # (N, M, 2)
    thin = extent < stride
    inside = torch.where(thin, offset <= stride / 2, offset < extent / 2).all(-1)
    near = (offset < torch.maximum(radius * stride, extent / 4)).all(-1)
    reach = extent.amax(-1) / 2  # (1, M)
    lower, upper = stride[:, 0, 0] * 4, stride[:, 0, 0] * 8
    lower[: per_level[0]] = 0
    upper[-per_level[-1] :] = float("inf")
    fits = (reach >= lower[:, None]) & (reach < upper[:, None])
    area = extent[0].prod(-1)  # (M,)
    match = inside & near & fits
    cost = torch.where(match, area[None], torch.full(match.shape, float("inf"), device=area.device))
    best, index = cost.min(dim=1)
    return torch.where(best.isinf(), torch.full_like(index, -1), index)


def atss_matches(
    anchors: Tensor, per_level: list[int], boxes: Tensor, top: int = ATSS_TOP
) -> Tensor:
    """Each location's box (an index into `boxes`, -1 for background) by adaptive training
    sample selection (ATSS, Zhang et al. 2020; its FCOS form). For each box, the `top`
    locations of each level nearest its centre are candidates, each seen as an anchor box
    ATSS_SCALE strides square about it; those whose anchor box overlaps the box by at least
    the mean plus the standard deviation of the candidates' IoUs, and whose centre lies
    inside the box, learn it. The bar is each box's own: one its level fits well gets that
    level's locations, where FCOS's fixed size ranges and 1.5-stride radius give a small or
    odd-shaped box few or none. Of several boxes a location takes the one its anchor box
    overlaps most."""
    from torchvision.ops import box_iou

    if not len(boxes):  # an image without defects: every location is background
        return torch.full((len(anchors),), -1, dtype=torch.int64, device=anchors.device)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    half = (anchors[:, 2:3] - anchors[:, 0:1]) * ATSS_SCALE / 2
    overlap = box_iou(torch.cat([centres - half, centres + half], 1), boxes)  # (N, M)
    distance = torch.cdist(centres, (boxes[:, :2] + boxes[:, 2:]) / 2)  # (N, M)
    candidate = torch.zeros_like(overlap, dtype=torch.bool)
    start = 0
    for count in per_level:
        nearest = distance[start : start + count].topk(min(top, count), 0, largest=False)
        candidate[start : start + count].scatter_(0, nearest.indices, True)
        start += count
    among = candidate.sum(0).clamp(min=2)  # (M,)
    mean = (overlap * candidate).sum(0) / among
    spread = (((overlap - mean) ** 2 * candidate).sum(0) / (among - 1)).sqrt()
    inside = (centres[:, None] > boxes[None, :, :2]) & (centres[:, None] < boxes[None, :, 2:])
    match = candidate & (overlap >= mean + spread) & inside.all(-1)
    best, index = torch.where(match, overlap, torch.full_like(overlap, -1.0)).max(dim=1)
    return torch.where(best < 0, torch.full_like(index, -1), index)


def line_centreness(anchors: Tensor, boxes: Tensor) -> Tensor:
    """FCOS's centreness target of each location for its box, sqrt((min(l, r) / max(l, r))
    * (min(t, b) / max(t, b))), with a side thinner than the location's stride counted as
    centred (a location beside a 2 px line is as central as one on it; FCOS's own target
    would be 0 there and damp the box's score at inference)."""
    centres = (anchors[..., :2] + anchors[..., 2:]) / 2
    stride = (anchors[..., 2] - anchors[..., 0])[..., None]
    near_side = (centres - boxes[..., :2]).clamp(min=0)
    far_side = (boxes[..., 2:] - centres).clamp(min=0)
    ratio = torch.minimum(near_side, far_side) / torch.maximum(near_side, far_side).clamp(min=1e-6)
    thin = (boxes[..., 2:] - boxes[..., :2]) < stride
    return torch.where(thin, torch.ones_like(ratio), ratio).prod(-1).sqrt()


class SoftplusConv2d(nn.Conv2d):
    """A convolution followed by softplus: FCOS's box distances for the line assignment.
    torchvision's head puts a ReLU on them; a thin box's distance across is a fraction of a
    stride, one overshooting step takes it below 0 and the ReLU never lets it back (measured:
    predicted cracks 0 px wide). Softplus keeps a gradient everywhere (ReLU after it changes
    nothing). The parameter names are a Conv2d's, so bundles load as before."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.softplus(super().forward(x))


def _line_fcos_head() -> type:
    """FCOS's head with the centreness loss on line_centreness (torchvision imported when
    first used)."""
    from torchvision.models.detection.fcos import FCOSHead

    class LineFCOSHead(FCOSHead):
        def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
            """torchvision's losses, with the centreness loss on line_centreness."""
            losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
            ctrness = head_outputs["bbox_ctrness"][..., 0]
            predicted, wanted = [], []
            for i, (target, matched) in enumerate(zip(targets, matched_idxs, strict=True)):
                mine = matched >= 0
                if mine.any():
                    boxes = target["boxes"][matched[mine]]
                    predicted.append(ctrness[i, mine])
                    wanted.append(line_centreness(anchors[i][mine], boxes))
            if predicted:
                loss = nn.functional.binary_cross_entropy_with_logits(
                    torch.cat(predicted), torch.cat(wanted), reduction="sum"
                )
                losses["bbox_ctrness"] = loss / max(1, sum(len(p) for p in predicted))
            return losses

    return LineFCOSHead


def _assigned_fcos(assign: str) -> type:
    """FCOS whose training assigns pyramid locations to boxes by `assign` (line or atss:
    line_matches or atss_matches in place of torchvision's centre rule; training only, the
    model is the same at inference)."""
    from torchvision.models.detection import FCOS

    class AssignedFCOS(FCOS):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.matches = (
                partial(line_matches, radius=self.center_sampling_radius)
                if assign == "line"
                else atss_matches
            )

        def compute_loss(self, targets, head_outputs, anchors, num_anchors_per_level):
            matched = [
                self.matches(a, num_anchors_per_level, t["boxes"])
                for a, t in zip(anchors, targets, strict=True)
            ]
            return self.head.compute_loss(targets, head_outputs, anchors, matched)

    AssignedFCOS.assign = assign
    return AssignedFCOS


def _fcos(backbone: nn.Module, config: DetectConfig, classes: int, common: dict) -> nn.Module:
    """FCOS with detect.assign's training rule: centre is torchvision's own; atss changes
    which locations learn a box; line changes that, the centreness target and the box
    distances' activation (softplus)."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    anchors = AnchorGenerator(tuple((s,) for s in FCOS_SIZES), ((1.0,),) * len(FCOS_SIZES))
    line = config.assign == "line"
    head_class = _line_fcos_head() if line else FCOSHead
    head = head_class(config.fpn_channels, 1, classes, num_convs=config.head_convs)
    # box distances start at one anchor size, not at 0: behind the head's ReLU, a distance
    # that starts at 0 gives a degenerate box, no GIoU gradient, and under Adam-like steps
    # that channel can die for good (measured: one side of every box stuck at the anchor's
    # centre)
    regression = head.regression_head
    nn.init.constant_(regression.bbox_reg.bias, 1.0)
    if line:  # softplus distances, starting at one anchor size too
        old = regression.bbox_reg
        regression.bbox_reg = SoftplusConv2d(
            old.in_channels, old.out_channels, old.kernel_size, padding=old.padding
        )
        regression.bbox_reg.load_state_dict(old.state_dict())
        nn.init.constant_(regression.bbox_reg.bias, math.log(math.e - 1))
    detector = _assigned_fcos(config.assign) if config.assign in ("line", "atss") else FCOS
    return detector(backbone, classes, anchor_generator=anchors, head=head, **common)


def _retinanet(backbone: nn.Module, config: DetectConfig, classes: int, common: dict) -> nn.Module:
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.retinanet import RetinaNetHead

    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in config.anchor_sizes)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    head = RetinaNetHead(
        config.fpn_channels,
        anchors.num_anchors_per_location()[0],
        classes,
        norm_layer=lambda c: nn.GroupNorm(min(32, c), c),
    )
    return RetinaNet(backbone, classes, anchor_generator=anchors, head=head, **common)


def _faster_rcnn(
    backbone: nn.Module, config: DetectConfig, classes: int, common: dict
) -> nn.Module:
    """torchvision's Faster R-CNN (its region proposal network on every pyramid level, its
    RoIAlign box head on P3-P6), at the CPU sizes above. torchvision counts class 0 as
    background: the box classes 0..K-1 are its 1..K inside the model, shifted on the way in
    and out."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.ops import MultiScaleRoIAlign

    class BoxClassFasterRCNN(FasterRCNN):
        def forward(self, images, targets=None):
            if targets is not None:
                targets = [{**t, "labels": t["labels"] + 1} for t in targets]
            found = super().forward(images, targets)
            if self.training:
                return found
            return [{**f, "labels": f["labels"] - 1} for f in found]

    anchors = AnchorGenerator(
        tuple((s,) for s in config.anchor_sizes), ((0.5, 1.0, 2.0),) * len(config.anchor_sizes)
    )
    channels = config.fpn_channels
    # torchvision names the box head's selection settings box_*
    selection = ("score_thresh", "nms_thresh", "detections_per_img")
    named = {(f"box_{k}" if k in selection else k): v for k, v in common.items()}
    return BoxClassFasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=RPN_TOP,
        rpn_pre_nms_top_n_test=RPN_TOP,
        rpn_post_nms_top_n_train=RPN_KEEP_TRAIN,
        rpn_post_nms_top_n_test=RPN_KEEP,
        rpn_nms_thresh=RPN_NMS,
        box_roi_pool=MultiScaleRoIAlign(list(ROI_MAPS), ROI_SIZE, sampling_ratio=2),
        box_head=TwoMLPHead(channels * ROI_SIZE**2, BOX_HEAD),
        box_predictor=FastRCNNPredictor(BOX_HEAD, classes + 1),
        box_batch_size_per_image=ROI_SAMPLES,
        **named,
    )


def build_detector(
    model_config: ModelConfig,
    config: DetectConfig,
    classes: int,
    size: int,
    in_channels: int = 3,
    *,
    pretrained: bool,
) -> tuple[nn.Module, dict[str, Any], Preprocessing]:
    """A torchvision detector for `classes` box classes (labels 0..classes-1) on
    model_config.backbone, for size x size inputs that are already normalised."""
    if config.arch not in ARCHS:
        raise ValueError(f"unknown detect.arch {config.arch!r}; use one of {ARCHS}")
    if config.reference_start not in REFERENCE_STARTS:
        raise ValueError(
            f"unknown detect.reference_start {config.reference_start!r}; use one of "
            f"{REFERENCE_STARTS}"
        )
    check_backbone_name(model_config.backbone)
    trunk = timm.create_model(
        model_config.backbone,
        pretrained=False,
        features_only=True,
        out_indices=(2, 3, 4),
        in_chans=in_channels,
    )
    info, source = pretrained_trunk(model_config, trunk, pretrained, config.reference_start)
    backbone = PyramidBackbone(trunk, trunk.feature_info.channels(), config.fpn_channels)
    common = {
        # the images arrive resized to size x size and normalised (the Inspector's input):
        # torchvision's own transform then only batches them
        "min_size": size,
        "max_size": size,
        "image_mean": [0.0] * in_channels,
        "image_std": [1.0] * in_channels,
        "score_thresh": config.score_floor,
        "nms_thresh": config.nms_iou,
        "detections_per_img": config.max_boxes,
    }
    build = {"fcos": _fcos, "retinanet": _retinanet, "faster_rcnn": _faster_rcnn}[config.arch]
    model = build(backbone, config, classes, common)
    model.defect_arch = config.arch
    fix_anchors(model, size, in_channels)
    return model, info, preprocessing_for(model_config.backbone, source)


def fix_anchors(model: nn.Module, size: int, in_channels: int) -> None:
    """Every location's anchor box for size x size inputs, kept as a buffer: the inference
    graph decodes against these constants (the same for every image of that size)."""
    from torchvision.models.detection.image_list import ImageList

    was_training = model.training
    model.eval()
    with torch.no_grad():
        probe = torch.zeros(1, in_channels, size, size, device=_device_of(model))
        features = list(model.backbone(probe).values())
        generator = model.rpn.anchor_generator if hasattr(model, "rpn") else model.anchor_generator
        anchors = generator(ImageList(probe, [(size, size)]), features)[0]
    model.register_buffer("inference_anchors", anchors, persistent=False)
    model.train(was_training)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def dense_outputs(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised size x size images -> (boxes (B, N, 4) in input pixels, class scores
    (B, N, K) in [0, 1]) for every candidate, before any score floor or NMS."""
    arch = getattr(model, "defect_arch", "fcos")
    if arch == "faster_rcnn":
        return two_stage_outputs(model, images)
    features = list(model.backbone(images).values())
    head = model.head(features)
    anchors = model.inference_anchors.to(images.device)
    logits = head["cls_logits"].float()
    regression = head["bbox_regression"].float()
    # anchors broadcast over the batch (no batch-sized copies: ONNX keeps a dynamic batch)
    if arch == "fcos":
        boxes = model.box_coder.decode(regression, anchors[None])
        centreness = head["bbox_ctrness"].float().sigmoid()
        scores = torch.sqrt(logits.sigmoid() * centreness)
    else:
        boxes = _decode_deltas(regression, anchors[None])
        scores = logits.sigmoid()
    return boxes.clamp(0, images.shape[-1]), scores


def two_stage_outputs(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """dense_outputs of a Faster R-CNN: what torchvision's eval-mode forward computes, as
    fixed-shape tensors. The region proposal network's RPN_KEEP proposals an image
    (`proposals`), RoIAlign from the pyramid level the FPN rule gives each (`pool_rois`),
    the box head's box for each proposal and class; N is RPN_KEEP x K, candidate r x K + k
    proposal r's box for class k, scored in column k only. Slots without a proposal, and
    boxes under 0.01 px a side (torchvision drops them), score 0."""
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    size = images.shape[-1]
    features = model.backbone(images)
    objectness, deltas = model.rpn.head(list(features.values()))
    per_level = [int(o.shape[1:].numel()) for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    anchors = model.inference_anchors.to(images.device)
    every = _decode_deltas(deltas.float().reshape(-1, len(anchors), 4), anchors[None])
    boxes, valid = proposals(
        every.clamp(0, size), objectness.float().reshape(-1, len(anchors)), per_level
    )
    flat = boxes.reshape(-1, 4)
    heads = model.roi_heads
    logits, regression = heads.box_predictor(heads.box_head(pool_rois(features, flat, RPN_KEEP)))
    classes = logits.shape[-1] - 1
    found = heads.box_coder.decode_single(regression.float(), flat).reshape(-1, classes + 1, 4)
    found = found[:, 1:].clamp(0, size)  # (B x RPN_KEEP, K, 4), the background's dropped
    scores = logits.float().softmax(-1)[:, 1:]
    sides = found[..., 2:] - found[..., :2]
    scores = torch.where((sides >= 1e-2).all(-1) & valid.reshape(-1, 1), scores, 0.0)
    # each (proposal, class) its own candidate, scored in its class's column alone
    one_class = scores[..., None] * torch.eye(classes, device=scores.device)
    candidates = RPN_KEEP * classes
    return found.reshape(-1, candidates, 4), one_class.reshape(-1, candidates, classes)


def proposals(boxes: Tensor, logits: Tensor, per_level: list[int]) -> tuple[Tensor, Tensor]:
    """The region proposal network's choice, as torchvision's filter_proposals makes it at
    inference, for decoded anchor boxes (B, T, 4) with objectness logits (B, T), T the
    per_level counts in turn: each level's RPN_TOP best, sides under 0.001 px dropped, NMS
    at RPN_NMS within each level, the RPN_KEEP best of the image. -> boxes (B, RPN_KEEP, 4)
    best first and which slots hold one (B, RPN_KEEP); an image with fewer has zero boxes
    in the rest."""
    chosen, level = [], []
    start = 0
    for n, count in enumerate(per_level):
        top = min(RPN_TOP, count)
        chosen.append(logits[:, start : start + count].topk(top, dim=1).indices + start)
        level += [n] * top
        start += count
    chosen = torch.cat(chosen, 1)  # (B, S)
    candidates = torch.gather(boxes, 1, chosen.unsqueeze(-1).expand(-1, -1, 4))
    # NMS and the ranking on the logits: most anchors' objectness is below 1e-7, where ONNX
    # Runtime's sigmoid gives 0 (torch's does not) and the two would choose among ties
    scores = torch.gather(logits, 1, chosen)
    sides = candidates[..., 2:] - candidates[..., :2]
    # each candidate scored in its own level's row only (NMS within each level), none for
    # a side under 0.001 px
    levels = torch.arange(len(per_level), device=boxes.device)[:, None]
    own = (levels == torch.tensor(level, device=boxes.device)[None])[None]  # (1, L, S)
    own = own & (sides >= 1e-3).all(-1)[:, None]
    by_level = torch.where(own, scores[:, None], float("-inf"))
    lowest = float(torch.finfo(torch.float32).min)
    kept = torch.ops.defectkit.class_nms(candidates, by_level, RPN_NMS, lowest, RPN_KEEP)
    image, index = kept[:, 0], kept[:, 2]
    best = scores[image, index].double()
    order, rank = ranked(image, 0.5 + 0.5 * best / (1 + best.abs()), boxes.shape[0])
    image, index = image[order], index[order]
    keep = rank < RPN_KEEP
    slot = (image * RPN_KEEP + rank)[keep]
    found = candidates.new_zeros((boxes.shape[0] * RPN_KEEP, 4))
    found = found.index_put((slot,), candidates[image[keep], index[keep]])
    valid = torch.zeros(boxes.shape[0] * RPN_KEEP, dtype=torch.bool, device=boxes.device)
    valid = valid.index_put((slot,), torch.ones_like(slot, dtype=torch.bool))
    return found.reshape(-1, RPN_KEEP, 4), valid.reshape(-1, RPN_KEEP)


def pool_rois(features: OrderedDict[str, Tensor], boxes: Tensor, per_image: int) -> Tensor:
    """RoIAlign of boxes (B x per_image, 4), image by image in turn, each from the pyramid
    map the FPN paper's rule gives its size (level floor(4 + log2(sqrt(area) / 224)) within
    P3-P6): what torchvision's MultiScaleRoIAlign over ROI_MAPS computes, with every level
    pooled for every box and the box's own kept (fixed shapes for the ONNX graph; RoIAlign
    is a small share of the head)."""
    from torchvision.ops import roi_align

    image = torch.arange(boxes.shape[0], device=boxes.device) // per_image
    rois = torch.cat([image[:, None].to(boxes.dtype), boxes], 1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
    level = (torch.floor(4 + torch.log2(area.sqrt() / 224) + 1e-6).clamp(3, 6) - 3).long()
    every = torch.stack(
        [
            roi_align(features[name], rois, ROI_SIZE, 1 / stride, sampling_ratio=2)
            for name, stride in zip(ROI_MAPS, ROI_STRIDES, strict=True)
        ]
    )  # (levels, B x per_image, channels, ROI_SIZE, ROI_SIZE)
    return torch.gather(every, 0, level[None, :, None, None, None].expand_as(every[:1]))[0]


def _decode_deltas(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """RetinaNet's box coding (torchvision's BoxCoder with weights 1, 1, 1, 1), broadcast:
    centre shifts in anchor sizes, log size ratios clamped as torchvision clamps them."""
    size = anchors[..., 2:] - anchors[..., :2]
    centre = anchors[..., :2] + 0.5 * size
    new_centre = deltas[..., :2] * size + centre
    new_size = torch.exp(deltas[..., 2:].clamp(max=math.log(1000.0 / 16))) * size
    return torch.cat([new_centre - 0.5 * new_size, new_centre + 0.5 * new_size], -1)


def trunk_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(model.backbone.trunk.parameters())


def frozen_stage_parameters(model: nn.Module, stages: int) -> list[nn.Parameter]:
    """The trunk's stem and first `stages` stages (detect.frozen_stages)."""
    return early_stage_parameters(model.backbone.trunk, stages, "detect.frozen_stages")


@torch.library.custom_op("defectkit::class_nms", mutates_args=())
def class_nms(boxes: Tensor, scores: Tensor, iou: float, floor: float, most: int) -> Tensor:
    """ONNX NonMaxSuppression's contract in eager torch: boxes (B, T, 4), scores (B, K, T)
    -> (M, 3) rows of (image, class, box index): per image and class the boxes scored above
    `floor`, NMS at `iou` (a box overlapping a better one by more is dropped), the `most`
    best. Exported as that ONNX operator (ONNX_TRANSLATIONS). Rows come per image, then per
    class, each class's best first.

    One torchvision batched_nms over every (image, class) group at once, not a loop of
    B x K calls; in float64, where its per-group coordinate offsets stay exact."""
    from torchvision.ops import batched_nms

    batch, classes, _ = scores.shape
    image, label, index = torch.nonzero(scores > floor, as_tuple=True)
    if not len(index):
        return boxes.new_zeros((0, 3), dtype=torch.int64)
    group = image * classes + label
    kept = batched_nms(
        boxes[image, index].double(), scores[image, label, index].double(), group, iou
    )
    # best first within each group (batched_nms's order), groups in order
    kept = kept[torch.sort(group[kept], stable=True).indices]
    # each box's rank in its group: its position less the position of the group's first
    position = torch.arange(len(kept), dtype=torch.int64, device=kept.device)
    first = torch.full((batch * classes,), len(kept), dtype=torch.int64, device=kept.device)
    first = first.scatter_reduce(0, group[kept], position, "amin", include_self=True)
    kept = kept[position - first[group[kept]] < most]
    return torch.stack([image[kept], label[kept], index[kept]], 1)


@class_nms.register_fake
def _class_nms_shape(boxes: Tensor, scores: Tensor, iou: float, floor: float, most: int):
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept, 3), dtype=torch.int64)


def _class_nms_onnx(boxes, scores, iou: float, floor: float, most: int):
    from onnxscript import opset18 as op

    return op.NonMaxSuppression(
        boxes,
        scores,
        op.Constant(value_ints=[most]),
        op.Constant(value_floats=[iou]),
        op.Constant(value_floats=[floor]),
    )


# how ONNX export writes the graph's own operators
ONNX_TRANSLATIONS = {torch.ops.defectkit.class_nms.default: _class_nms_onnx}


def select_boxes(
    boxes: Tensor,
    scores: Tensor,
    floor: float,
    nms_iou: float,
    most: int,
    top_k: int = TOP_K,
    views: int = 1,
    merge: str = "nms",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dense_outputs' (B, N, 4) boxes and (B, N, K) scores -> the kept detections of the
    batch, flat: image index (M,), boxes (M, 4), scores (M,), class index (M,); ordered by
    image, then score (best first). Per image: the top_k best (location, class) pairs, NMS
    within each class, scores above `floor`, the `most` best.

    With `views` > 1 the N locations are the views' own in turn (deploy.viewed_outputs) and
    `merge` says what becomes of a box several views found: nms keeps the best view's box
    and score; wbf fuses each kept box with every view's best box of its class overlapping
    it by nms_iou or more (fuse_views)."""
    batch, locations, k = scores.shape
    top = min(top_k, locations * k)
    best, index = scores.reshape(batch, locations * k).topk(top, dim=1)
    where, labels = index // k, index % k
    candidates = torch.gather(boxes, 1, where.unsqueeze(-1).expand(-1, -1, 4))
    # each candidate scored in its own class only (0 elsewhere, never above the floor)
    by_class = torch.zeros(batch, k, top, dtype=best.dtype, device=best.device)
    by_class = by_class.scatter(1, labels.unsqueeze(1), best.unsqueeze(1))
    kept = torch.ops.defectkit.class_nms(candidates, by_class, nms_iou, floor, most)
    image, candidate = kept[:, 0], kept[:, 2]
    found_boxes, found_scores = candidates[image, candidate], best[image, candidate]
    if views > 1 and merge == "wbf":
        found_boxes, found_scores = fuse_views(
            found_boxes,
            labels[image, candidate],
            candidates[image],
            best[image],
            labels[image],
            where[image] // (locations // views),
            views,
            nms_iou,
            floor,
            image,
            batch,
        )
    order, rank = ranked(image, found_scores, batch)
    image, candidate = image[order], candidate[order]
    found_boxes, found_scores = found_boxes[order], found_scores[order]
    keep = rank < most
    image, candidate = image[keep], candidate[keep]
    return image, found_boxes[keep], found_scores[keep], labels[image, candidate]


def ranked(image: Tensor, scores: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """The order of entries of image index (M,) scored (M,) in [0, 1], image first, then
    the best score; and each entry's rank within its image in that order (M,)."""
    # one float64 key (exact for any batch size)
    order = torch.argsort(image.double() * 2 + (1 - scores.double()))
    image = image[order]
    # the rank: the entry's position less the position of its image's first
    position = torch.arange(image.shape[0], dtype=torch.int64, device=image.device)
    first = torch.full((batch,), image.shape[0], dtype=torch.int64, device=image.device)
    first = first.scatter_reduce(0, image, position, "amin", include_self=True)
    return order, position - first[image]


def fuse_views(
    kept: Tensor,
    kept_labels: Tensor,
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    view: Tensor,
    views: int,
    iou: float,
    floor: float,
    image: Tensor,
    batch: int,
) -> tuple[Tensor, Tensor]:
    """Weighted box fusion (Solovyev et al. 2021) of test-time views: each kept box (M, 4)
    of class kept_labels (M,) against its image's candidates (M, T, 4), scored (M, T), of
    class labels (M, T) from view (M, T). From each view the best-scored candidate of the
    kept box's class overlapping it by `iou` or more (none where a view has none above
    `floor`): the fused box is their score-weighted mean, its score their sum over
    `views`, so a box every view finds keeps its mean score and a box one view of four
    finds a quarter of it. As in WBF's clusters, a candidate counts for one kept box only:
    of those of its image (`image` (M,), of `batch` images) it overlaps by `iou` or more,
    the one it overlaps most (else one strong box would lift every weaker duplicate near
    it to its own score). The kept box is its own view's best, so every weight sum is > 0.
    Tensor operations only: exported into the ONNX graph as they are."""
    low = torch.maximum(kept[:, None, :2], boxes[..., :2])
    high = torch.minimum(kept[:, None, 2:], boxes[..., 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    area = (kept[:, 2:] - kept[:, :2]).prod(-1)[:, None]
    union = area + (boxes[..., 2:] - boxes[..., :2]).prod(-1) - inter
    overlap = inter / union.clamp(min=1e-12)
    match = (overlap >= iou) & (labels == kept_labels[:, None]) & (scores > floor)
    # each candidate with the kept box of its image it overlaps most
    mine = torch.where(match, overlap, torch.full_like(overlap, -1.0))
    most = torch.full((batch, mine.shape[1]), -1.0, dtype=mine.dtype, device=mine.device)
    most = most.scatter_reduce(0, image[:, None].expand_as(mine), mine, "amax")
    match = match & (mine >= most[image])
    each_view = torch.arange(views, device=view.device)[None, :, None]
    from_view = match[:, None, :] & (view[:, None, :] == each_view)  # (M, views, T)
    view_scores = torch.where(from_view, scores[:, None, :], torch.zeros_like(scores[:, None, :]))
    best, at = view_scores.max(-1)  # each view's best matching candidate
    chosen = torch.gather(boxes, 1, at[..., None].expand(-1, -1, 4))  # (M, views, 4)
    weight = best / best.sum(1, keepdim=True).clamp(min=1e-12)
    return (weight[..., None] * chosen).sum(1), best.sum(1) / views
