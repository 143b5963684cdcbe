"""The segment task: pixel masks of defects with a U-Net family model, robust to most images
being OK: a sampler that balances NG and OK images, an OK/NG gate on the encoder that empties
the mask of images it calls OK, and metrics with and without the gate."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, WeightedRandomSampler

from defectkit.config import RunConfig, config_to_dict
from defectkit.data.samples import DatasetError
from defectkit.data.segmentation import SegmentationDataset
from defectkit.data.tiles import slide
from defectkit.data.transforms import to_image_size
from defectkit.engine.distributed import is_main, mean_across_ranks, shard, sync_batchnorm, wrap
from defectkit.engine.fit import Fit, fit
from defectkit.engine.losses import MaskLoss
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
from defectkit.metrics import (
    SegmentationScores,
    choose_threshold,
    regions_of,
)
from defectkit.models.classifier import keep_frozen_bn_in_eval
from defectkit.models.segmenter import Segmenter, build_segmenter
from defectkit.predictions import PredictionWriter, decide_segment, drop_small_regions
from defectkit.runs import peak_rss_mb, state_mb, write_json
from defectkit.tasks.segment import deploy, report
from defectkit.tasks.start import open_run

log = logging.getLogger(__name__)
TRAIN_ON = ("all", "ng")


def _loader(dataset, batch_size: int, num_workers: int = 0, sampler=None, shuffle=False):
    """shuffle: a training loader (it never ends on a batch of one image)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle and sampler is None,
        num_workers=num_workers,
        drop_last=shuffle and lone_last_batch(dataset, sampler, batch_size),
    )


def balanced_sampler(is_ng: list[bool], seed: int) -> WeightedRandomSampler | None:
    """NG and OK images drawn equally often (None when one of them is missing)."""
    flags = np.array(is_ng)
    counts = np.array([(~flags).sum(), flags.sum()])
    if counts.min() == 0:
        return None
    weights = 1.0 / counts[flags.astype(int)]
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(weights.tolist(), len(flags), generator=generator)


def set_encoder_trainable(model: Segmenter, trainable: bool, frozen_stages: int = 0) -> None:
    """The whole encoder on or off, its first `frozen_stages` stages always off."""
    for parameter in model.encoder_parameters():
        parameter.requires_grad = trainable
    for parameter in model.early_stage_parameters(frozen_stages):
        parameter.requires_grad = False


@torch.inference_mode()
def predict(
    model: Segmenter, dataset: SegmentationDataset, device: torch.device, batch_size: int = 16
) -> tuple[list[torch.Tensor], np.ndarray, float]:
    """Mask probabilities at input size (tiled: at the image's own size, windows averaged),
    gate NG probabilities (tiled: the most confident window's), and ms per image."""
    model.eval()
    masks, gates = [], []
    tick = time.perf_counter()
    if dataset.tiled:

        def run(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, gate = model(windows.to(device))
            return logits.float().sigmoid().cpu(), gate.float().sigmoid().cpu()

        for i in range(len(dataset)):
            probability, gate = slide(dataset.full(i), dataset.size, run, batch_size)
            masks.append(probability)
            gates.append(np.array([gate], dtype=np.float32))
    else:
        for x, _, _ in _loader(dataset, batch_size):
            logits, gate = model(x.to(device))
            masks += list(logits.float().sigmoid().cpu())
            gates.append(gate.float().sigmoid().cpu().numpy())
    ms = 1000 * (time.perf_counter() - tick) / max(1, len(dataset))
    return masks, (np.concatenate(gates) if gates else np.empty(0)), ms


def evaluate_masks(
    dataset: SegmentationDataset,
    probabilities: list[torch.Tensor],
    gate_probs: np.ndarray,
    gate_threshold: float,
    config: RunConfig,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics at each image's own resolution, with and without the gate; per-image rows."""
    sc = config.segment
    plain, gated = SegmentationScores(sc.region_iou), SegmentationScores(sc.region_iou)
    rows = []
    for i, (probability, gate) in enumerate(zip(probabilities, gate_probs, strict=True)):
        sample, truth = dataset.samples[i], dataset.mask(i)
        full = to_image_size(probability, truth.shape, config.data.image_size, config.data.resize)
        predicted = drop_small_regions(full >= sc.mask_threshold, sc.min_region)
        # the bundle's own call on this image (gate, gated mask, regions), for predictions.csv
        decision = decide_segment(
            str(sample.image),
            full,
            float(gate),
            gate_threshold if sc.gate else None,
            sc.mask_threshold,
            sc.min_region,
        )
        iou = plain.add(truth, predicted, sample.label)
        passed = not sc.gate or gate >= gate_threshold
        gated_iou = gated.add(
            truth, predicted if passed else np.zeros_like(predicted), sample.label
        )
        rows.append(
            {
                "image": str(sample.image),
                "label": sample.label,
                "true_ng": bool(truth.any()),
                "gate_ng_probability": float(gate),
                "predicted_pixels": int(predicted.sum()),
                "predicted_regions": len(regions_of(predicted)),
                "iou": iou,
                "iou_gated": gated_iou,
                "decision": decision,
            }
        )
    result: dict[str, Any] = {"without_gate": plain.result()}
    if sc.gate:
        result["with_gate"] = gated.result()
        truth = np.array([r["true_ng"] for r in rows])
        called = np.asarray(gate_probs) >= gate_threshold
        result["gate"] = {
            "threshold": gate_threshold,
            "ng_recall": float(called[truth].mean()) if truth.any() else None,
            "ok_specificity": float((~called[~truth]).mean()) if (~truth).any() else None,
        }
    headline = result["with_gate" if sc.gate else "without_gate"]
    intervals = (gated if sc.gate else plain).uncertainty()
    return {**headline, **intervals, **result}, rows


def run_segment(config: RunConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    sc, tc = config.segment, config.train
    if sc.train_on not in TRAIN_ON:
        raise ValueError(f"unknown segment.train_on {sc.train_on!r}; use one of {TRAIN_ON}")
    started = time.perf_counter()
    device, dataset, split = open_run(config, run_dir, resume)

    in_channels = 6 if sc.reference else 3
    model, weights_info, prep = build_segmenter(
        config.model, sc, in_channels, pretrained=config.model.pretrained
    )
    prep = prep.for_data(config.data)
    model.early_stage_parameters(sc.frozen_stages)  # a stage count the encoder has, or stop
    model.to(device)
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    model = sync_batchnorm(model, tc.sync_batchnorm, device)
    options = {
        "size": config.data.image_size,
        "mean": prep.mean,
        "std": prep.std,
        "resize": prep.resize,
        "reference": sc.reference,
        "cache": config.data.cache_images,
    }
    train_set = SegmentationDataset(
        split.train, augment=config.data.augment != "none", seed=tc.seed, **options
    )
    val_set = SegmentationDataset(split.val, **options)
    test_set = SegmentationDataset(split.test, **options)
    train_ng = train_set.is_ng()
    if not any(train_ng):
        raise DatasetError(
            f"{dataset.root}: no training image has a defect in its mask or boxes; the "
            "segment task needs masks (image_mask, mvtec layouts) or boxes (voc, yolo, deeppcb)"
        )
    log.info(
        "%s: %s layout; train %d (%d NG) / val %d / test %d; input %d channels",
        dataset.root,
        dataset.layout,
        len(train_set),
        sum(train_ng),
        len(val_set),
        len(test_set),
        in_channels,
    )
    sampler = balanced_sampler(train_ng, tc.seed) if sc.balance else None
    # under torchrun each rank draws its shard of every epoch (train.batch_size per rank)
    rank_sampler, epoch_setter = shard(sampler, train_set, tc.seed)
    train_loader = _loader(
        train_set, tc.batch_size, config.data.num_workers, rank_sampler, shuffle=True
    )

    groups = trunk_and_head_groups(model, model.encoder_parameters(), tc)
    optimizer = make_optimizer(groups, tc)
    schedule = make_schedule(optimizer, tc, optimizer_steps(len(train_loader), tc.accumulate))
    mask_loss = MaskLoss(
        sc.loss, sc.bce_weight, sc.dice_weight, sc.focal_gamma, sc.tversky_alpha, sc.tversky_beta
    )

    amp_dtype, scaler = mixed_precision(tc.amp, device)

    def step(model: Segmenter, batch: Any, device: torch.device):
        """Mask loss (on NG images only with train_on=ng), plus the gate's OK/NG loss."""
        x, y, ng = (part.to(device) for part in batch)
        if tc.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits, gate = model(x)
        weights = ng if sc.train_on == "ng" else None
        loss = mask_loss(logits[:, None], y[:, None], weights)
        if sc.gate:
            loss = loss + sc.gate_weight * F.binary_cross_entropy_with_logits(gate.float(), ng)
        return loss, len(x), {}

    def run_epoch(epoch: int) -> dict[str, float]:
        frozen = epoch < sc.freeze_epochs
        set_encoder_trainable(model, not frozen, sc.frozen_stages)
        if epoch_setter is not None:
            epoch_setter.set_epoch(epoch)
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
            description=f"epoch {epoch + 1}/{tc.epochs}" + (" (encoder frozen)" if frozen else ""),
            step=step,
        )
        return {"train_loss": mean_across_ranks(stats)["loss"]}

    loop = Fit(
        task="segment",
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        epochs=tc.epochs,
        run_epoch=run_epoch,
        validate=(lambda: _validate(model, val_set, device, sc.mask_threshold))
        if len(val_set)
        else None,
        # the best validation defect IoU; without validation the latest epoch is best
        score=lambda row: row.get("val_defect_iou", row["epoch"]),
        line=lambda row: _epoch_line(row, tc.epochs),
        early_stopping=tc.early_stopping,
        scaler=scaler,
        rng_sources=(generator_of(rank_sampler), train_set.rng),
        extra={"config": config_to_dict(config)},
        ema=tc.ema,
    )
    best_path = fit(loop, run_dir, resume)
    history = loop.history
    train_seconds = sum(h["seconds"] for h in history)

    if not is_main():
        return {}  # rank 0 evaluates and writes the report and bundle
    model.load_state_dict(load_checkpoint(best_path)["model"])
    gate_threshold = 0.5
    if sc.gate and len(val_set):
        _, val_gates, _ = predict(model, val_set, device)
        val_ng = np.array(val_set.is_ng())
        if val_ng.any() and not val_ng.all():
            gate_threshold = choose_threshold(
                val_ng, val_gates, config.eval.threshold_rule, config.eval.target
            )
    probabilities, gates, ms = predict(model, test_set, device)
    result, rows = evaluate_masks(test_set, probabilities, gates, gate_threshold, config)
    result.update(
        {
            "ms_per_image": ms,
            "train_seconds": train_seconds,
            "total_seconds": time.perf_counter() - started,
            "peak_rss_mb": peak_rss_mb(),
            "epochs_run": len(history),
            "weights": weights_info,
            "device": str(device),
            "model_mb": state_mb(model),
            "test_images": len(test_set),
        }
    )
    write_json(run_dir / "metrics.json", result)
    write_decisions(run_dir / "predictions.csv", rows)
    deploy.save_bundle(run_dir / "bundle", model, config, prep, in_channels, gate_threshold)
    report.write_segment_report(run_dir, config, test_set, probabilities, rows, result, history)
    return result


PER_IMAGE = ["truth", "true_ng", "predicted_pixels", "predicted_regions", "iou", "iou_gated"]


def write_decisions(path: Path, rows: list[dict[str, Any]]) -> None:
    """predictions.csv: each test image's decision in the columns of `defectkit predict`,
    then its truth and per-image numbers (predicted_pixels and iou before the gate)."""
    with PredictionWriter(path, ["defect", "gate"], extra=PER_IMAGE) as writer:
        for row in rows:
            extra = {k: row[k] for k in PER_IMAGE if k != "truth"}
            writer.write(row["decision"], truth=row["label"], **extra)


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    line = f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}"
    if "val_defect_iou" in row:
        line += f" | val defect IoU {row['val_defect_iou']:.4f}"
    return line + f" | {row['seconds']:.1f} s"


@torch.inference_mode()
def _validate(
    model: Segmenter, dataset: SegmentationDataset, device: torch.device, threshold: float
) -> dict[str, float]:
    """Defect IoU over the validation images at input size (tiled: at their own size;
    quick, for picking the best epoch) and the gate's accuracy."""
    probabilities, gates, _ = predict(model, dataset, device)
    tp = fp = fn = 0
    right = 0
    for i, (probability, gate) in enumerate(zip(probabilities, gates, strict=True)):
        predicted = probability >= threshold
        truth = torch.from_numpy(dataset.mask(i)) if dataset.tiled else dataset[i][1].bool()
        tp += int((predicted & truth).sum())
        fp += int((predicted & ~truth).sum())
        fn += int((~predicted & truth).sum())
        right += int((gate >= 0.5) == bool(truth.any()))
    return {
        "val_defect_iou": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
        "val_gate_accuracy": right / max(1, len(dataset)),
    }
