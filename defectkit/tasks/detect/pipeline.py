"""The detect task: defect boxes with a torchvision detector (FCOS, RetinaNet, Faster R-CNN) on
a timm backbone through a feature pyramid, trained in the shared epoch loop (the model returns
its losses), validated by mAP@0.5, its OK/NG threshold (NG = a box at or above it) chosen on
the validation images, and every test number computed from the decisions the bundle makes."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from defectkit.config import RunConfig, config_to_dict
from defectkit.data.detection import DetectionDataset, box_classes, collate
from defectkit.data.prepare import boxes_to_image
from defectkit.data.samples import DatasetError
from defectkit.data.transforms import VIEWS
from defectkit.engine.distributed import is_main, mean_across_ranks, shard, sync_batchnorm, wrap
from defectkit.engine.fit import Fit, fit
from defectkit.engine.train import (
    generator_of,
    load_checkpoint,
    lone_last_batch,
    make_optimizer,
    make_schedule,
    mixed_precision,
    optimizer_steps,
    train_one_epoch,
    trunk_and_head_groups,
)
from defectkit.metrics import choose_threshold
from defectkit.models.backbones import load_trunk_weights
from defectkit.models.classifier import keep_frozen_bn_in_eval
from defectkit.models.detector import (
    assign_warning,
    build_detector,
    frozen_stage_parameters,
    resolve_assign,
    trunk_parameters,
)
from defectkit.predictions import (
    Prediction,
    PredictionWriter,
    calibrated_box_scores,
    decide_detect,
)
from defectkit.runs import peak_rss_mb, state_mb, write_json
from defectkit.tasks.detect import deploy, report
from defectkit.tasks.detect.evaluate import (
    box_curves,
    choose_box_thresholds,
    coco_map,
    evaluate_detections,
    point_at,
)
from defectkit.tasks.start import open_run

log = logging.getLogger(__name__)


def run_detect(config: RunConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    dc, tc = config.detect, config.train
    started = time.perf_counter()
    device, dataset, split = open_run(config, run_dir, resume)
    classes = box_classes(dataset.samples)
    if not classes:
        raise DatasetError(
            f"{dataset.root}: no image has a box; the detect task needs boxes (voc, yolo, "
            "deeppcb layouts; `defectkit data inspect` shows what was found)"
        )
    in_channels = 6 if dc.reference else 3
    size = config.data.image_size
    extents = [(b.x2 - b.x1, b.y2 - b.y1) for s in split.train for b in s.boxes]
    dc = replace(dc, assign=resolve_assign(dc.assign, extents))
    if dc.arch == "fcos":
        log.info("FCOS assignment: %s (detect.assign=%s)", dc.assign, config.detect.assign)
        if warning := assign_warning(dc.assign, extents):
            log.warning(warning)
    config = replace(config, detect=dc)  # the bundle records the assignment it trained with
    model, weights_info, prep = build_detector(
        config.model, dc, len(classes), size, in_channels, pretrained=config.model.pretrained
    )
    frozen_stage_parameters(model, dc.frozen_stages)  # a stage count the trunk has, or stop
    prep = prep.for_data(config.data)
    if tc.init_from:
        weights_info["warm_start"] = warm_start(model, tc.init_from, config.model.backbone, classes)
    model.to(device)
    if tc.channels_last:  # the convolutions' weights; torchvision batches the images itself
        model.to(memory_format=torch.channels_last)
    model = sync_batchnorm(model, tc.sync_batchnorm, device)
    options = {
        "size": size,
        "mean": prep.mean,
        "std": prep.std,
        "resize": prep.resize,
        "interpolation": prep.interpolation,
        "reference": dc.reference,
        "cache": config.data.cache_images,
    }
    train_set = DetectionDataset(
        split.train,
        classes,
        augment=config.data.augment != "none",
        scale_jitter=dc.scale_jitter,
        mosaic=dc.mosaic,
        seed=tc.seed,
        **options,
    )
    val_set = DetectionDataset(split.val, classes, **options)
    test_set = DetectionDataset(split.test, classes, **options)
    log.info(
        "%s: %s layout; %d box classes %s; train %d (%d boxes) / val %d / test %d",
        dataset.root,
        dataset.layout,
        len(classes),
        classes,
        len(train_set),
        sum(len(s.boxes) for s in split.train),
        len(val_set),
        len(test_set),
    )
    # under torchrun each rank draws its shard of every epoch (train.batch_size per rank)
    rank_sampler, epoch_setter = shard(None, train_set, tc.seed)
    train_loader = DataLoader(
        train_set,
        batch_size=tc.batch_size,
        sampler=rank_sampler,
        shuffle=rank_sampler is None,
        num_workers=config.data.num_workers,
        collate_fn=collate,
        drop_last=lone_last_batch(train_set, rank_sampler, tc.batch_size),
    )
    groups = trunk_and_head_groups(model, trunk_parameters(model), tc)
    optimizer = make_optimizer(groups, tc)
    schedule = make_schedule(optimizer, tc, optimizer_steps(len(train_loader), tc.accumulate))
    amp_dtype, scaler = mixed_precision(tc.amp, device)

    def step(model: nn.Module, batch: Any, device: torch.device):
        """torchvision's detector returns its losses (classification, box regression;
        centreness for FCOS; objectness and proposal regression for Faster R-CNN); their sum
        trains, each is logged."""
        images, targets = batch
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses = model(list(images.to(device)), targets)
        parts = {f"{k}_loss": float(v.detach()) * len(images) for k, v in losses.items()}
        return sum(losses.values()), len(images), parts

    def run_epoch(epoch: int) -> dict[str, float]:
        frozen = epoch < dc.freeze_epochs
        for parameter in trunk_parameters(model):
            parameter.requires_grad = not frozen
        for parameter in frozen_stage_parameters(model, dc.frozen_stages):
            parameter.requires_grad = False
        if epoch_setter is not None:
            epoch_setter.set_epoch(epoch)
        # set from the epoch alone, so a resumed run mixes as the uninterrupted one did
        train_set.mosaic = dc.mosaic if epoch < tc.epochs - dc.mosaic_off_epochs else 0.0
        stats = train_one_epoch(
            wrap(model, device),
            train_loader,
            None,
            optimizer,
            schedule,
            device,
            amp_dtype=amp_dtype,
            scaler=scaler,
            before_step=keep_frozen_bn_in_eval,
            accumulate=tc.accumulate,
            description=f"epoch {epoch + 1}/{tc.epochs}" + (" (backbone frozen)" if frozen else ""),
            step=step,
        )
        stats = mean_across_ranks(stats)
        return {f"train_{k}": v for k, v in stats.items()}

    def validate() -> dict[str, float]:
        predictions = predict(model, val_set, classes, dc.threshold, config, device)
        return {"val_map_50": validation_map(val_set, predictions, classes)}

    loop = Fit(
        task="detect",
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        epochs=tc.epochs,
        run_epoch=run_epoch,
        validate=validate if len(val_set) and any(val_set.is_ng()) else None,
        # the best validation mAP@0.5; without validation boxes the latest epoch is best
        score=lambda row: row.get("val_map_50", row["epoch"]),
        line=lambda row: _epoch_line(row, tc.epochs),
        early_stopping=tc.early_stopping,
        scaler=scaler,
        rng_sources=(generator_of(rank_sampler), train_set.rng),
        extra={"config": config_to_dict(config), "classes": classes},
        ema=tc.ema,
    )
    best_path = fit(loop, run_dir, resume)
    history = loop.history
    if not is_main():
        return {}  # rank 0 evaluates and writes the report and bundle
    model.load_state_dict(load_checkpoint(best_path)["model"])

    box_thresholds, threshold, threshold_from, val_points = calibrate(
        model, val_set, classes, config, device
    )
    cuts = [box_thresholds[c] for c in classes]
    tick = time.perf_counter()
    predictions = predict(model, test_set, classes, threshold, config, device, cuts)
    ms_per_image = 1000 * (time.perf_counter() - tick) / max(1, len(test_set))
    result = evaluate_detections(test_set.samples, predictions, classes, threshold, dc.match_iou)
    result.update(
        {
            "classes": classes,
            "threshold": threshold,
            "threshold_from": threshold_from,
            "box_thresholds": box_thresholds,
            "box_rule": f"{dc.box_rule} (target {dc.box_target})"
            if dc.box_rule == "precision"
            else dc.box_rule,
            "val_box_points": val_points,
            "ms_per_image": ms_per_image,
            "train_seconds": sum(h["seconds"] for h in history),
            "total_seconds": time.perf_counter() - started,
            "peak_rss_mb": peak_rss_mb(),
            "epochs_run": len(history),
            "weights": weights_info,
            "device": str(device),
            "model_mb": state_mb(model),
            "arch": dc.arch,
            "assign": dc.assign if dc.arch == "fcos" else None,
        }
    )
    write_json(run_dir / "metrics.json", result)
    write_decisions(run_dir / "predictions.csv", test_set, predictions, classes)
    deploy.save_bundle(
        run_dir / "bundle", model, config, prep, classes, threshold, in_channels, box_thresholds
    )
    report.write_detect_report(run_dir, config, test_set.samples, predictions, result, history)
    return result


def calibrate(
    model: nn.Module,
    val_set: DetectionDataset,
    classes: list[str],
    config: RunConfig,
    device: torch.device,
) -> tuple[dict[str, float], float, str, dict[str, dict[str, float | None]]]:
    """Each class's box threshold from the validation boxes (detect.box_rule), then the
    image OK/NG cut on the calibrated scale (0.5 = a box at its class's threshold; eval's
    threshold rule where validation holds OK and NG images). Returns the box thresholds,
    the image threshold, where it came from, and each class's validation precision and
    recall at its threshold."""
    dc = config.detect
    if not len(val_set) or not any(val_set.is_ng()):
        fixed = {c: dc.threshold for c in classes}
        return fixed, 0.5, "detect.threshold (no validation boxes)", {}
    raw = predict(model, val_set, classes, dc.threshold, config, device)
    truths, found = coco_lists(val_set, raw, classes)
    curves = box_curves(truths, found, classes, dc.match_iou)
    box_thresholds = choose_box_thresholds(
        curves, dc.box_rule, dc.box_target, dc.threshold, dc.score_floor
    )
    points = {c: point_at(curves[c], box_thresholds[c]) for c in classes}
    threshold, threshold_from = 0.5, f"each class's box threshold ({dc.box_rule})"
    val_ng = np.array(val_set.is_ng())
    if val_ng.any() and not val_ng.all():
        # each image's best box on the calibrated scale, as the bundle will score it
        scores = np.array(
            [
                calibrated_box_scores(
                    np.array([b.peak for b in p.boxes]),
                    np.array([box_thresholds[b.label] for b in p.boxes]),
                ).max()
                if p.boxes
                else 0.0
                for p in raw
            ]
        )
        rule, target = config.eval.threshold_rule, config.eval.target
        threshold = choose_threshold(val_ng, scores, rule, target)
        threshold_from = f"validation images ({rule}) on the calibrated box scores"
    return box_thresholds, threshold, threshold_from, points


# the layers whose outputs are the box classes (FCOS and RetinaNet score each class; Faster
# R-CNN's box head also gives each class its own box)
CLASS_LAYERS = ("classification_head.cls_logits", "roi_heads.box_predictor")


def transferable(
    own: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], same_classes: bool
) -> dict[str, torch.Tensor]:
    """The tensors of an earlier detector's state `theirs` that a model whose state is `own`
    takes: those of the same name and shape; the class layers' only for the same classes."""
    return {
        k: v
        for k, v in theirs.items()
        if k in own
        and v.shape == own[k].shape
        and (same_classes or not any(layer in k for layer in CLASS_LAYERS))
    }


def warm_start(model: nn.Module, source: str, backbone: str, classes: list[str]) -> str:
    """Start from an earlier run's weights: a detect run's whole model (its class layer only
    when the classes match), or a classify run's trunk (a classifier trained on the same
    defects knows their texture)."""
    path = Path(source)
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
        if not path.exists():
            path = path.with_name("last.pt")
    checkpoint = load_checkpoint(path)
    theirs = checkpoint["config"]["model"]["backbone"]
    if theirs != backbone:
        raise ValueError(
            f"{path} was trained with backbone {theirs}, this run uses {backbone}: set "
            f"model.backbone={theirs} to warm start from it"
        )
    if checkpoint["task"] == "classify":
        loaded = load_trunk_weights(model.backbone.trunk, checkpoint["model"])
        return f"{path} (classify trunk: {loaded['encoder_tensors_loaded']} tensors)"
    if checkpoint["task"] != "detect":
        raise ValueError(
            f"{path} is a {checkpoint['task']} checkpoint: a detector warm-starts from a "
            "detect run (all of it) or a classify run (its trunk)"
        )
    same_classes = list(checkpoint.get("classes", ())) == list(classes)
    state = transferable(model.state_dict(), checkpoint["model"], same_classes)
    model.load_state_dict(state, strict=False)
    return f"{path} ({len(state)} tensors{', classes kept' if same_classes else ', new classes'})"


@torch.inference_mode()
def predict(
    model: nn.Module,
    dataset: DetectionDataset,
    classes: list[str],
    threshold: float,
    config: RunConfig,
    device: torch.device,
    class_thresholds: list[float] | None = None,
    batch_size: int = 16,
) -> list[Prediction]:
    """Each image's decision through the inference graph and the bundle's box rules (the
    code the Inspector runs), boxes in the image's own pixels; scores calibrated to the
    class thresholds where given (predictions.decide_detect)."""
    dc = config.detect
    model.eval()
    decisions = []
    classes_args = (classes, threshold, class_thresholds)
    rules = {
        "score_floor": dc.score_floor,
        "nms_iou": dc.nms_iou,
        "max_boxes": dc.max_boxes,
        "views": VIEWS[config.eval.tta],
        "merge": dc.tta_merge,
    }

    def run(chunk: np.ndarray | torch.Tensor) -> list[np.ndarray]:
        kept = deploy.graph(model, torch.as_tensor(chunk).to(device), **rules)
        return [t.cpu().numpy() for t in kept]

    if dataset.resize == "tile":  # windows slid over each whole image, as the Inspector does
        for i, sample in enumerate(dataset.samples):
            boxes, scores, labels = deploy.tiled_boxes(
                run, dataset.full(i).numpy(), dataset.size, dc.nms_iou, dc.max_boxes, batch_size
            )
            decisions.append(
                decide_detect(
                    str(sample.image),
                    boxes,
                    scores,
                    labels,
                    *classes_args,
                )
            )
        return decisions
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        found = deploy.per_image(run(torch.stack([dataset[i][0] for i in indices])), len(indices))
        for i, (boxes, scores, labels) in zip(indices, found, strict=True):
            height, width = dataset.raw(i).shape[-2:]
            in_image = boxes_to_image(boxes, height, width, dataset.size, dataset.resize)
            decisions.append(
                decide_detect(
                    str(dataset.samples[i].image),
                    in_image,
                    scores,
                    labels,
                    *classes_args,
                )
            )
    return decisions


def coco_lists(
    dataset: DetectionDataset, predictions: list[Prediction], classes: list[str]
) -> tuple[list, list]:
    """The true and predicted boxes of each image in coco_map's form."""
    index = {c: k for k, c in enumerate(classes)}
    truths = [
        [(index[b.label], b.x1, b.y1, b.x2, b.y2) for b in sample.boxes]
        for sample in dataset.samples
    ]
    found = [
        [(index[r.label], r.peak, r.x, r.y, r.x + r.width, r.y + r.height) for r in p.boxes]
        for p in predictions
    ]
    return truths, found


def validation_map(
    dataset: DetectionDataset, predictions: list[Prediction], classes: list[str]
) -> float:
    return coco_map(*coco_lists(dataset, predictions, classes), classes)["map_50"]


PER_IMAGE = ["truth", "true_boxes"]


def write_decisions(
    path: Path, dataset: DetectionDataset, predictions: list[Prediction], classes: list[str]
) -> None:
    """predictions.csv: each test image's decision in the columns of `defectkit predict`,
    then its truth (the image's label) and its number of true boxes."""
    with PredictionWriter(path, classes, extra=PER_IMAGE) as writer:
        for sample, prediction in zip(dataset.samples, predictions, strict=True):
            writer.write(prediction, truth=sample.label, true_boxes=len(sample.boxes))


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    line = f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}"
    if "val_map_50" in row:
        line += f" | val mAP@0.5 {row['val_map_50']:.4f}"
    return line + f" | {row['seconds']:.1f} s"
