"""The classify task: images labelled by defect type (or OK/NG) -> a trained, evaluated,
bundled classifier. Reads top to bottom as the pipeline in DESIGN.md."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from defectkit.config import RunConfig, config_to_dict
from defectkit.data.samples import DatasetError
from defectkit.data.splits import Split
from defectkit.data.tensors import ImageDataset
from defectkit.data.transforms import (
    VIEWS,
    eval_transform,
    require_whole_images,
    train_transform,
    view,
)
from defectkit.engine.distributed import is_main, mean_across_ranks, shard, sync_batchnorm, wrap
from defectkit.engine.fit import Fit, fit
from defectkit.engine.losses import balanced_class_weights, make_loss
from defectkit.engine.train import (
    generator_of,
    load_checkpoint,
    lone_last_batch,
    make_optimizer,
    make_sampler,
    make_schedule,
    mixed_precision,
    optimizer_steps,
    predict_logits,
    train_one_epoch,
)
from defectkit.models.classifier import (
    STRATEGIES,
    build_classifier,
    head_at_class_means,
    head_of,
    keep_frozen_bn_in_eval,
    parameter_groups,
    set_backbone_trainable,
)
from defectkit.runs import peak_rss_mb, write_json
from defectkit.tasks.classify import deploy, evaluate, report
from defectkit.tasks.start import open_run

log = logging.getLogger(__name__)


def check_split(split: Split, classes: tuple[str, ...]) -> None:
    missing = [c for c in classes if not any(s.label == c for s in split.train)]
    if missing:
        raise DatasetError(
            f"class(es) {missing} have no training images after the split: add "
            "images, lower split.test_fraction, or remove the class"
        )


def warm_start(model: nn.Module, source: str, backbone: str, classes: tuple[str, ...]) -> str:
    """Load an earlier classify run's weights: the whole trunk, the head only if the classes
    match (train on one defect set, transfer to another)."""
    path = Path(source)
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
        if not path.exists():
            path = path.with_name("last.pt")
    checkpoint = load_checkpoint(path)
    if checkpoint["task"] != "classify":
        raise ValueError(
            f"{path} is a {checkpoint['task']} checkpoint; warm start of a "
            "classifier needs a classify run"
        )
    theirs = checkpoint["config"]["model"]["backbone"]
    if theirs != backbone:
        raise ValueError(
            f"{path} was trained with backbone {theirs}, this run uses {backbone}: "
            f"set model.backbone={theirs} to warm start from it"
        )
    own = model.state_dict()
    state = {k: v for k, v in checkpoint["model"].items() if k in own and v.shape == own[k].shape}
    same_classes = tuple(checkpoint.get("classes", ())) == classes
    if not same_classes:
        head = {f"{n}" for n, _ in model.named_parameters() if n.startswith(_head_prefix(model))}
        state = {k: v for k, v in state.items() if k not in head}
    model.load_state_dict(state, strict=False)
    return f"{path} ({len(state)} tensors{', head kept' if same_classes else ', new head'})"


def _head_prefix(model: nn.Module) -> str:
    return model.default_cfg.get("classifier", "classifier")


@torch.inference_mode()
def extract_features(
    model: nn.Module, loader: DataLoader, device: torch.device, description: str, views: int = 1
) -> TensorDataset:
    """Pooled backbone features, computed once: with a frozen backbone, every epoch would
    recompute the same numbers (the seeds' "feature extraction"). views > 1: each image
    also under the first `views` flips and quarter turns (data.transforms.view), as many
    feature rows per image: the few-shot path's augmentation, paid once."""
    model.eval()
    features, targets = [], []
    for inputs, target in tqdm(
        loader, desc=description, leave=False, dynamic_ncols=True, disable=None
    ):
        inputs = inputs.to(device)
        for j in range(views):
            pooled = model.forward_head(model.forward_features(view(inputs, j)), pre_logits=True)
            features.append(pooled.float().cpu())
            targets.append(torch.as_tensor(target))
    return TensorDataset(torch.cat(features), torch.cat(targets))


def _loader(dataset, batch_size: int, config: RunConfig, sampler=None, shuffle=False):
    """shuffle: a training loader (it never ends on a batch of one image)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle and sampler is None,
        num_workers=config.data.num_workers,
        persistent_workers=config.data.num_workers > 0,
        drop_last=shuffle and lone_last_batch(dataset, sampler, batch_size),
    )


def run_classify(config: RunConfig, run_dir: Path, resume: bool = False) -> dict:
    tc = config.train
    if tc.strategy not in STRATEGIES:
        raise ValueError(f"unknown train.strategy {tc.strategy!r}; use one of {STRATEGIES}")
    started = time.perf_counter()

    # dataset on disk -> Samples -> train / val / test
    device, dataset, split = open_run(config, run_dir, resume)
    check_split(split, dataset.classes)
    summary = {
        "root": str(dataset.root),
        "layout": dataset.layout,
        "classes": dataset.classes,
        "counts": {
            part: {c: sum(s.label == c for s in members) for c in dataset.classes}
            for part, members in split.parts().items()
        },
    }
    if is_main():
        write_json(run_dir / "data_summary.json", summary)
    log.info(
        "%s: %s layout, %d images, classes %s; train %d / val %d / test %d",
        dataset.root,
        dataset.layout,
        len(dataset),
        ", ".join(dataset.classes),
        len(split.train),
        len(split.val),
        len(split.test),
    )

    # model, with pretrained or warm-started weights and the strategy's frozen parts
    classes = dataset.classes
    model, weights_info, prep = build_classifier(
        config.model, len(classes), pretrained=config.model.pretrained and tc.strategy != "scratch"
    )
    if tc.init_from:
        weights_info["warm_start"] = warm_start(model, tc.init_from, config.model.backbone, classes)
    model.to(device)
    model = sync_batchnorm(model, tc.sync_batchnorm, device)
    on_features = tc.strategy in ("frozen", "fewshot")  # the head trains on features alone
    frozen_now = on_features or (tc.strategy == "freeze_then_unfreeze" and tc.unfreeze_epoch > 0)
    set_backbone_trainable(model, not frozen_now)

    size = config.data.image_size
    require_whole_images(config.data.resize, "classify")
    prep = prep.for_data(config.data)
    eval_tf = eval_transform(
        size=size,
        mean=prep.mean,
        std=prep.std,
        interpolation=prep.interpolation,
        resize=prep.resize,
    )
    train_tf = train_transform(
        size=size,
        mean=prep.mean,
        std=prep.std,
        interpolation=prep.interpolation,
        preset=config.data.augment,
        resize=prep.resize,
    )
    cache = config.data.cache_images
    train_set = ImageDataset(split.train, classes, train_tf, cache)
    val_set = ImageDataset(split.val, classes, eval_tf, cache)
    test_set = ImageDataset(split.test, classes, eval_tf, cache)
    targets = train_set.targets()
    weight = (
        balanced_class_weights(targets, len(classes)).to(device)
        if tc.class_weights == "balanced"
        else None
    )
    loss_fn = make_loss(
        tc.loss,
        weight=weight,
        label_smoothing=tc.label_smoothing,
        focal_gamma=tc.focal_gamma,
        ordinal_weight=tc.ordinal_weight,
    ).to(device)

    feature_seconds = 0.0  # frozen / fewshot: the one pass that computes the features
    if on_features:
        # train the head alone on features computed once; the model keeps that head
        tick = time.perf_counter()
        views = VIEWS[tc.views] if tc.strategy == "fewshot" else 1
        feature_train = extract_features(
            model,
            _loader(ImageDataset(split.train, classes, eval_tf, cache), 64, config),
            device,
            "features train",
            views,
        )
        val_features = (
            extract_features(model, _loader(val_set, 64, config), device, "features val")
            if len(val_set)
            else None
        )
        feature_seconds = time.perf_counter() - tick
        if tc.strategy == "fewshot":
            head_at_class_means(head_of(model), *feature_train.tensors)
        trained: nn.Module = nn.Sequential(nn.Dropout(config.model.drop_rate), head_of(model))
        train_source = feature_train
        val_loader = _loader(val_features, 256, config) if val_features is not None else None
        before_step = None
    else:
        trained = model
        train_source = train_set
        val_loader = _loader(val_set, 64, config) if len(val_set) else None
        before_step = keep_frozen_bn_in_eval

    # the sampler draws rows of what trains: images, or feature rows (views per image)
    sampler = make_sampler(
        tc.sampler,
        feature_train.tensors[1].tolist() if on_features else targets,
        tc.seed,
    )
    # under torchrun each rank draws its shard of every epoch (train.batch_size per rank)
    rank_sampler, epoch_setter = shard(sampler, train_source, tc.seed)
    train_loader = _loader(train_source, tc.batch_size, config, rank_sampler, shuffle=True)
    optimizer = make_optimizer(parameter_groups(model, tc.lr, tc.head_lr_mult, tc.weight_decay), tc)
    schedule = make_schedule(optimizer, tc, optimizer_steps(len(train_loader), tc.accumulate))
    amp_dtype, scaler = mixed_precision(tc.amp, device)

    def run_epoch(epoch: int) -> dict[str, float]:
        if tc.strategy == "freeze_then_unfreeze" and epoch >= tc.unfreeze_epoch:
            set_backbone_trainable(model, True)
        if epoch_setter is not None:
            epoch_setter.set_epoch(epoch)
        stats = train_one_epoch(
            wrap(trained, device),
            train_loader,
            loss_fn,
            optimizer,
            schedule,
            device,
            amp_dtype=amp_dtype,
            scaler=scaler,
            before_step=before_step,
            accumulate=tc.accumulate,
            description=f"epoch {epoch + 1}/{tc.epochs}",
        )
        stats = mean_across_ranks(stats)
        return {"train_loss": stats["loss"], "train_accuracy": stats["accuracy"]}

    def validate() -> dict[str, float]:
        logits, val_targets = predict_logits(trained, val_loader, device)
        return {
            "val_loss": float(nn.functional.cross_entropy(logits, val_targets)),
            "val_accuracy": float((logits.argmax(1) == val_targets).float().mean()),
        }

    loop = Fit(
        task="classify",
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        epochs=tc.epochs,
        run_epoch=run_epoch,
        validate=validate if val_loader is not None else None,
        # the lowest validation loss; without validation the latest epoch is best
        score=lambda row: -row["val_loss"] if "val_loss" in row else row["epoch"],
        line=lambda row: _epoch_line(row, tc.epochs),
        early_stopping=tc.early_stopping,
        scaler=scaler,
        rng_sources=(generator_of(rank_sampler),),
        extra={"classes": list(classes), "config": config_to_dict(config)},
        ema=tc.ema,
    )
    best_path = fit(loop, run_dir, resume)
    history = loop.history
    train_seconds = feature_seconds + sum(h["seconds"] for h in history)

    if not is_main():
        return {}  # rank 0 evaluates and writes the report and bundle
    # evaluate the best weights on the test split, write metrics, report and bundle
    model.load_state_dict(load_checkpoint(best_path)["model"])
    result = evaluate.evaluate_classifier(model, test_set, device, config, run_dir, val_set)
    result.update(
        {
            "train_seconds": train_seconds,
            "total_seconds": time.perf_counter() - started,
            "peak_rss_mb": peak_rss_mb(),
            "epochs_run": len(history),
            "weights": weights_info,
            "device": str(device),
        }
    )
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    write_json(run_dir / "metrics.json", result)
    deploy.save_bundle(
        run_dir / "bundle",
        model,
        config,
        classes,
        prep,
        threshold=result.get("binary", {}).get("threshold"),
        positive=result.get("positive"),
    )
    report.write_classify_report(run_dir, config, summary, history, result)
    return result


def _epoch_line(row: dict, epochs: int) -> str:
    line = (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_accuracy']:.4f}"
    )
    if "val_loss" in row:
        line += f" | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
    return line + f" | {row['seconds']:.1f} s"
