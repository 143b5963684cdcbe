"""The anomaly task: fit on defect-free images only, calibrate an OK/NG threshold on held-out
defect-free images (no defect labels needed), then score the test images: image and pixel
AUROC, AUPRO, F1, heat maps at each image's own resolution."""

from __future__ import annotations

import inspect
import logging
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from defectkit.config import RunConfig, config_to_dict
from defectkit.data.prepare import content_box
from defectkit.data.samples import DatasetError, Sample, SampleSet, ok_class
from defectkit.data.splits import Split
from defectkit.data.tensors import image_tensor
from defectkit.data.transforms import eval_transform, require_whole_images
from defectkit.engine.distributed import contiguous_share, gather_rows, is_main, launched
from defectkit.engine.fit import Fit, fit
from defectkit.engine.train import (
    load_checkpoint,
    make_optimizer,
    make_schedule,
    save_checkpoint,
    train_one_epoch,
)
from defectkit.models.anomaly import create_method
from defectkit.models.backbones import preprocessing_for
from defectkit.runs import peak_rss_mb, release_freed_memory, state_mb, write_json
from defectkit.tasks.anomaly import deploy, report
from defectkit.tasks.anomaly.deploy import ANOMALOUS, load_fitted_state, save_bundle
from defectkit.tasks.anomaly.evaluate import evaluate_anomaly
from defectkit.tasks.start import open_run

log = logging.getLogger(__name__)


def good_label(dataset: SampleSet, requested: str) -> str:
    if requested:
        if requested not in dataset.classes:
            raise DatasetError(
                f"anomaly.good_label={requested!r} is not a class of "
                f"{dataset.root}; classes: {list(dataset.classes)}"
            )
        return requested
    good = ok_class(dataset.classes)
    if good is not None:
        return good
    raise DatasetError(
        f"no defect-free class among {list(dataset.classes)} in {dataset.root}: "
        "name it with --set anomaly.good_label=NAME"
    )


def anomaly_split(
    dataset: SampleSet, good: str, test_fraction: float, calibration: float, seed: int
) -> dict[str, list[Sample]]:
    """fit / calibration / test. A layout's own split (MVTec AD) is kept; otherwise the good
    images are shuffled with the seed and the first int((1 - test_fraction) n) are for
    training (PROTOCOLS.md), every defect image is for testing. Calibration images are good
    images carved out of the training part."""
    samples = dataset.samples
    if any(s.meta.get("split") for s in samples):
        train = [s for s in samples if s.meta.get("split") == "train" and s.label == good]
        test = [s for s in samples if s.meta.get("split") == "test"]
    else:
        goods = sorted((s for s in samples if s.label == good), key=lambda s: str(s.image))
        random.Random(seed).shuffle(goods)
        cut = int((1 - test_fraction) * len(goods))
        train, test = goods[:cut], goods[cut:] + [s for s in samples if s.label != good]
    n_cal = int(calibration * len(train))
    if len(train) - n_cal < 1 or n_cal < 1:
        raise DatasetError(
            f"{dataset.root}: {len(train)} defect-free training image(s) leave {n_cal} to "
            f"calibrate the threshold with split.val_fraction={calibration}: an anomaly model "
            "needs tens of good images, and at least one held out (raise split.val_fraction)"
        )
    return {"fit": train[n_cal:], "calibration": train[:n_cal], "test": test}


class Batches:
    """Image batches of samples, re-iterable (a method that trains, like the autoencoder,
    goes over them once per epoch); images are decoded once and kept as uint8."""

    def __init__(self, samples: Sequence[Sample], transform, batch_size: int, device: torch.device):
        self.samples, self.transform = samples, transform
        self.batch_size, self.device = batch_size, device
        self.decoded: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return -(-len(self.samples) // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for images, _ in self.with_sizes():
            yield images

    def with_sizes(self) -> Iterator[tuple[torch.Tensor, list[tuple[int, int]]]]:
        """Batches with each image's own (height, width)."""
        for start in range(0, len(self.samples), self.batch_size):
            images, sizes = [], []
            for i in range(start, min(start + self.batch_size, len(self.samples))):
                images.append(self.transform(self.image(i)))
                sizes.append(self.size(i))
            yield torch.stack(images).to(self.device), sizes

    def image(self, i: int) -> torch.Tensor:
        if i not in self.decoded:
            self.decoded[i] = image_tensor(self.samples[i].image)
        return self.decoded[i]

    def size(self, i: int) -> tuple[int, int]:
        """(height, width) of the i-th image."""
        return tuple(self.image(i).shape[-2:])


def score(
    model, samples: Sequence[Sample], transform, config: RunConfig, device: torch.device
) -> tuple[np.ndarray, list[torch.Tensor], list[tuple[int, int]]]:
    """Image scores, smoothed maps and each image's (height, width), computed by the graph
    that the Inspector runs and ONNX export writes; each map cropped to the image's own
    content (see data.resize) and its maximum the image score, as the Inspector does."""
    size, sigma = config.data.image_size, config.anomaly.blur_sigma
    scores, maps, image_sizes = [], [], []
    with torch.inference_mode():
        for images, sizes in Batches(samples, transform, 16, device).with_sizes():
            _, smoothed = deploy.graph(model, images, size=size, blur_sigma=sigma)
            batch_scores, crops = crop_to_images(smoothed.cpu(), sizes, config)
            scores += batch_scores
            maps += crops
            image_sizes += sizes
    return np.array(scores, dtype=np.float64), maps, image_sizes


def crop_to_images(
    smoothed: torch.Tensor, sizes: Sequence[tuple[int, int]], config: RunConfig
) -> tuple[list[float], list[torch.Tensor]]:
    """Smoothed input-size maps cropped to each image's content; their maxima."""
    scores, crops = [], []
    for amap, (height, width) in zip(smoothed, sizes, strict=True):
        top, left, h, w = content_box(height, width, config.data.image_size, config.data.resize)
        crops.append(amap[top : top + h, left : left + w])
        scores.append(float(crops[-1].max()))
    return scores, crops


def suspect_training_images(
    model, fit: Batches, threshold: float, config: RunConfig, device: torch.device
) -> dict[str, Any]:
    """Training images that score above the calibrated threshold: defects among the "good"
    images. A method that keeps training patches (PatchCore) scores them leave-one-out, as
    held-out images; others score up to 256 of them as they are. At the target false-alarm
    rate about rate x checked images pass the threshold by chance; many more are a warning."""
    from defectkit.models.anomaly import smooth_maps

    loo = getattr(model, "training_maps", None)
    if loo:
        indices = sorted(loo)
        smoothed = smooth_maps(
            torch.stack([loo[i] for i in indices]).float(),
            config.data.image_size,
            config.anomaly.blur_sigma,
        )
        sizes = [fit.size(i) for i in indices]
        scores, _ = crop_to_images(smoothed, sizes, config)
    else:
        indices = sorted(
            random.Random(0).sample(range(len(fit.samples)), min(256, len(fit.samples)))
        )
        scores = list(
            score(model, [fit.samples[i] for i in indices], fit.transform, config, device)[0]
        )
    flagged = sorted(
        ((s, fit.samples[i].image) for i, s in zip(indices, scores, strict=True) if s >= threshold),
        reverse=True,
    )
    expected = config.anomaly.false_alarm_rate * len(indices)
    result = {
        "checked": len(indices),
        "above_threshold": len(flagged),
        "expected_by_chance": expected,
        "leave_one_out": bool(loo),
        "images": [{"image": str(path), "score": s} for s, path in flagged[:50]],
    }
    if len(flagged) > 2 * expected + 1:
        log.warning(
            "%d of %d defect-free training images checked score above the threshold (about "
            "%.0f expected by chance): the training folder may hold defects, e.g. %s. Look at "
            "them (metrics.json training_check) and move real defects out, then train again",
            len(flagged),
            len(indices),
            expected,
            ", ".join(Path(p).name for _, p in flagged[:5]),
        )
    return result


def write_decisions(
    path: Path,
    samples: Sequence[Sample],
    scores: np.ndarray,
    crops: Sequence[torch.Tensor],
    sizes: Sequence[tuple[int, int]],
    good: str,
    threshold: float,
    norm: dict[str, float],
) -> None:
    """predictions.csv as `defectkit predict` writes it for the bundle (same decisions,
    normalised scores and regions on the map at each image's own size), with the truth."""
    from defectkit.predictions import PredictionWriter, decide_anomaly

    classes = [good, ANOMALOUS]
    with PredictionWriter(path, ["anomaly_score", ANOMALOUS], extra=["truth"]) as writer:
        for sample, raw, crop, size in zip(samples, scores, crops, sizes, strict=True):
            full = F.interpolate(crop[None, None].float(), size=size, mode="bilinear")[0, 0]
            decision = decide_anomaly(
                str(sample.image), float(raw), full.numpy(), classes, threshold, norm
            )
            writer.write(decision, truth=sample.label)


def normalisation(calibration_scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Threshold -> 0.5, the lowest defect-free calibration score -> 0 (see
    inspect.normalise); a floor on the scale keeps one calibration image usable."""
    spread = threshold - float(np.min(calibration_scores))
    return {"threshold": threshold, "scale": max(spread, 0.05 * abs(threshold), 1e-6)}


def train_over_epochs(
    model: nn.Module,
    batches: Batches,
    config: RunConfig,
    run_dir: Path,
    resume: bool,
    device: torch.device,
) -> dict[str, Any]:
    """A method that learns by gradient steps (its `loss` of a batch of good images) trains
    in the epoch loop of classify and segment: Adam at the method's lr for anomaly.epochs,
    checkpointed after every epoch (an interrupted fit resumes mid-way), history.csv and
    TensorBoard; the last epoch is kept (no labelled images to validate on)."""
    settings = replace(
        config.train, optimizer="adam", lr=model.lr, weight_decay=0.0, schedule="constant"
    )
    optimizer = make_optimizer([{"params": list(model.parameters())}], settings)
    schedule = make_schedule(optimizer, settings, len(batches))
    epochs = config.anomaly.epochs

    def step(model: nn.Module, images: torch.Tensor, device: torch.device):
        return model.loss(images), len(images), {}

    def run_epoch(epoch: int) -> dict[str, float]:
        stats = train_one_epoch(
            model,
            batches,
            None,
            optimizer,
            schedule,
            device,
            step=step,
            description=f"{config.anomaly.method} epoch {epoch + 1}/{epochs}",
        )
        return {"train_loss": stats["loss"]}

    loop = Fit(
        task="anomaly",
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        epochs=epochs,
        run_epoch=run_epoch,
        validate=None,
        score=lambda row: row["epoch"],
        line=lambda row: f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.5f}",
        ema=config.train.ema,
        extra={"config": config_to_dict(config)},
    )
    best = fit(loop, run_dir, resume)
    if config.train.ema:  # the moving average of the weights (the last epoch is the best)
        model.load_state_dict(load_checkpoint(best)["model"])
    model.eval()
    return {
        "epochs": len(loop.history),
        "final_loss": loop.history[-1]["train_loss"],
        "model_mb": sum(p.numel() for p in model.parameters()) * 4 / 2**20,
    }


def run_anomaly(config: RunConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    ac = config.anomaly
    require_whole_images(config.data.resize, "anomaly")

    def split_good_images(dataset: SampleSet) -> Split:
        parts = anomaly_split(
            dataset,
            good_label(dataset, ac.good_label),
            config.split.test_fraction,
            config.split.val_fraction,
            config.split.seed,
        )
        return Split(tuple(parts["fit"]), tuple(parts["calibration"]), tuple(parts["test"]))

    # the common run start and split.json (train = fit, val = calibration, test)
    device, dataset, split = open_run(config, run_dir, resume, split_good_images, "anomaly")
    good = good_label(dataset, ac.good_label)
    parts = {"fit": list(split.train), "calibration": list(split.val), "test": list(split.test)}
    log.info(
        "%s: %s layout; fit on %d good images, calibrate on %d, test %d (%d defective)",
        dataset.root,
        dataset.layout,
        len(parts["fit"]),
        len(parts["calibration"]),
        len(parts["test"]),
        sum(s.label != good for s in parts["test"]),
    )

    model = create_method(
        ac.method,
        backbone=config.model.backbone,
        layers=ac.layers,
        coreset_ratio=ac.coreset_ratio,
        max_coreset=ac.max_coreset,
        projection_dim=ac.projection_dim,
        pool=ac.pool,
        pretrained=config.model.pretrained,
        weights=config.model.weights,
        epochs=ac.epochs,
        hard_fraction=ac.hard_fraction,
        seed=config.train.seed,
    ).to(device)
    features = getattr(model, "features", None)
    prep = preprocessing_for(config.model.backbone, getattr(features, "backbone", None))
    prep = prep.for_data(config.data)
    transform = eval_transform(
        size=config.data.image_size,
        mean=prep.mean,
        std=prep.std,
        interpolation=prep.interpolation,
        resize=prep.resize,
    )

    fit_batches = Batches(parts["fit"], transform, 16, device)
    sharded = launched()  # under torchrun each rank extracts the features of its share
    if sharded and "gather" not in inspect.signature(getattr(model, "fit", len)).parameters:
        raise ValueError(
            f"anomaly.method={ac.method} trains in one process: run `defectkit train` "
            "without torchrun (patchcore, padim and patchcore_padim fit sharded)"
        )
    fitted = run_dir / "checkpoints" / deploy.CHECKPOINT
    reuse = resume and fitted.is_file()
    if reuse:  # the fit is done: reuse it, never refit
        state = load_checkpoint(fitted)
        load_fitted_state(model, state["model"])
        if state.get("training_maps"):
            model.training_maps = state["training_maps"]
        fit_info, fit_seconds = state["fit"], state["fit_seconds"]
        log.info("resumed %s with the %s fitted before (%.1f s)", run_dir, ac.method, fit_seconds)
    else:
        tick = time.perf_counter()
        if hasattr(model, "loss"):  # trained over epochs: the shared epoch loop
            fit_info = train_over_epochs(model, fit_batches, config, run_dir, resume, device)
        elif sharded:  # every rank builds the same model from all ranks' features
            share = Batches(contiguous_share(parts["fit"]), transform, 16, device)
            fit_info = model.fit(_progress(share, ac.method), gather=gather_rows)
        else:
            fit_info = model.fit(_progress(fit_batches, ac.method))
        fit_seconds = time.perf_counter() - tick
        log.info("fitted %s in %.1f s: %s", ac.method, fit_seconds, fit_info)
    if not is_main():
        return {}  # rank 0 calibrates, evaluates and writes the run folder and bundle
    if not reuse:
        save_checkpoint(
            fitted,
            {
                "task": "anomaly",
                "model": model.state_dict(),
                "training_maps": getattr(model, "training_maps", None) or {},
                "fit": fit_info,
                "fit_seconds": fit_seconds,
                "config": config_to_dict(config),
            },
        )

    release_freed_memory()  # what the fit freed (its features), before the scoring passes
    calibration_scores, _, _ = score(model, parts["calibration"], transform, config, device)
    threshold = float(np.quantile(calibration_scores, 1 - ac.false_alarm_rate))
    suspects = suspect_training_images(model, fit_batches, threshold, config, device)
    del fit_batches  # its decoded training images: the test set's pixel metrics need the room
    release_freed_memory()

    tick = time.perf_counter()
    test_scores, test_maps, test_sizes = score(model, parts["test"], transform, config, device)
    ms_per_image = 1000 * (time.perf_counter() - tick) / max(1, len(parts["test"]))
    result = evaluate_anomaly(parts["test"], good, test_scores, test_maps, threshold)
    result.update(
        {
            "fit_seconds": fit_seconds,
            "ms_per_image": ms_per_image,
            "peak_rss_mb": peak_rss_mb(),
            "fit": fit_info,
            "device": str(device),
            "good_label": good,
            "calibration_images": len(parts["calibration"]),
            "threshold": threshold,
            "training_check": suspects,
            "false_alarm_rate_target": ac.false_alarm_rate,
            "method": ac.method,
            "model_mb": state_mb(model),
        }
    )
    write_json(run_dir / "metrics.json", result)
    norm = normalisation(calibration_scores, threshold)
    write_decisions(
        run_dir / "predictions.csv",
        parts["test"],
        test_scores,
        test_maps,
        test_sizes,
        good,
        threshold,
        norm,
    )
    save_bundle(run_dir / "bundle", model, config, prep, threshold, good, norm)
    report.write_anomaly_report(
        run_dir, config, parts["test"], good, test_scores, test_maps, result
    )
    return result


def _progress(batches: Iterable[torch.Tensor], method: str) -> Iterable[torch.Tensor]:
    """The fit's batches with a progress bar (the methods themselves show none: a service
    that loads their bundles imports no progress bars)."""
    from tqdm.auto import tqdm

    return tqdm(batches, desc=f"{method} features", leave=False, disable=None)
