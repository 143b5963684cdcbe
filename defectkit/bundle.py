"""The model bundle: safetensors weights + bundle.json metadata, everything needed to run the
model elsewhere (task, classes, preprocessing, input size, threshold, backbone, versions,
checksum). Loading never unpickles."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import defectkit
from defectkit.config import RunConfig
from defectkit.models.backbones import Preprocessing, sha256_of
from defectkit.runs import write_json

BUNDLE_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "bundle.json"

ANOMALOUS = "anomalous"  # the NG class name of every anomaly bundle


class BundleError(ValueError):
    """A bundle folder that is incomplete, damaged or from an unknown format version."""


def _write_bundle(
    folder: Path,
    model: nn.Module,
    config: RunConfig,
    prep: Preprocessing,
    task_meta: dict[str, Any],
) -> Path:
    """model.safetensors + bundle.json: what every task records, plus `task_meta`."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights)
    )
    meta = {
        "format": BUNDLE_FORMAT,
        "backbone": config.model.backbone,
        "input_size": [config.data.image_size, config.data.image_size],
        "preprocessing": {
            **asdict(prep),
            # squash: the whole image to input_size; pad: longer side to input_size, edges
            # replicated into the rest; never a crop; tile: input_size windows of the
            # image at its own size, overlapping, outputs averaged (data/tiles.py)
            "channels": "RGB (greyscale replicated)",
        },
        **task_meta,
        "versions": {
            "defectkit": defectkit.__version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
        },
        "weights_sha256": sha256_of(weights),
    }
    write_json(folder / META_FILE, meta)
    return folder


def save_classifier_bundle(
    folder: Path,
    model: nn.Module,
    config: RunConfig,
    classes: tuple[str, ...],
    prep: Preprocessing,
    threshold: float | None = None,
    positive: str | None = None,
) -> Path:
    return _write_bundle(
        folder,
        model,
        config,
        prep,
        {
            "task": "classify",
            "classes": list(classes),
            "positive_class": positive,
            # NG probability at or above this is NG; without a binary problem, argmax decides
            "threshold": threshold,
        },
    )


def save_anomaly_bundle(
    folder: Path,
    model: nn.Module,
    config: RunConfig,
    prep: Preprocessing,
    threshold: float,
    good_label: str,
    normalisation: dict[str, float],
) -> Path:
    """Backbone weights and fitted state (memory bank, Gaussians) in one file, so the bank
    can never be lost or mixed up."""
    ac = config.anomaly
    return _write_bundle(
        folder,
        model,
        config,
        prep,
        {
            "task": "anomaly",
            "method": ac.method,
            "method_options": {"layers": list(ac.layers), "blur_sigma": ac.blur_sigma},
            "classes": [good_label, ANOMALOUS],
            # image score (max of the smoothed map) at or above this is NG; calibrated on
            # defect-free images for the false-alarm rate below
            "threshold": threshold,
            "false_alarm_rate": ac.false_alarm_rate,
            # scores and maps are reported as 0.5 + (raw - threshold) / (2 scale), clipped
            # to [0, 1]: 0.5 is the threshold whatever the method
            "normalisation": normalisation,
        },
    )


def read_meta(folder: Path) -> dict[str, Any]:
    folder = Path(folder)
    if (folder / "bundle").is_dir() and not (folder / META_FILE).exists():
        folder = folder / "bundle"  # a run folder was given
    meta_path, weights = folder / META_FILE, folder / WEIGHTS_FILE
    for path in (meta_path, weights):
        if not path.is_file():
            raise BundleError(
                f"{path} is missing: a bundle folder holds {META_FILE} and "
                f"{WEIGHTS_FILE} (a run writes one under <run>/bundle)"
            )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{meta_path}: bundle format {meta.get('format')} is not "
            f"{BUNDLE_FORMAT}; re-export it with this defectkit version"
        )
    if sha256_of(weights) != meta.get("weights_sha256"):
        raise BundleError(
            f"{weights} does not match the checksum in {meta_path}: the bundle "
            "was altered or damaged; copy it again from the run folder"
        )
    meta["folder"] = str(folder)
    return meta


def load_classifier(
    folder: Path, meta: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    meta = meta or read_meta(folder)
    if meta["task"] != "classify":
        raise BundleError(f"{folder} holds a {meta['task']} model, not a classifier")
    model = timm.create_model(meta["backbone"], pretrained=False, num_classes=len(meta["classes"]))
    model.load_state_dict(load_file(str(Path(meta["folder"]) / WEIGHTS_FILE)))
    return model.eval(), meta


def load_anomaly(
    folder: Path, meta: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """An anomaly method with its fitted state (memory bank, Gaussians or decoder)."""
    from defectkit.models.anomaly import create_method

    meta = meta or read_meta(folder)
    if meta["task"] != "anomaly":
        raise BundleError(f"{folder} holds a {meta['task']} model, not an anomaly model")
    options = meta["method_options"]
    model = create_method(
        meta["method"], backbone=meta["backbone"], layers=tuple(options["layers"]), pretrained=False
    )
    state = load_file(str(Path(meta["folder"]) / WEIGHTS_FILE))
    buffers = dict(model.named_buffers())
    for name, tensor in state.items():  # fitted buffers start empty: give them their size
        if name in buffers and buffers[name].shape != tensor.shape:
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            owner.register_buffer(leaf, torch.empty_like(tensor))
    model.load_state_dict(state)
    return model.eval(), meta


def save_segment_bundle(
    folder: Path,
    model: nn.Module,
    config: RunConfig,
    prep: Preprocessing,
    in_channels: int,
    gate_threshold: float,
) -> Path:
    sc = config.segment
    return _write_bundle(
        folder,
        model,
        config,
        prep,
        {
            "task": "segment",
            "arch": sc.arch,
            "encoder_depth": sc.encoder_depth,
            "decoder_channels": list(sc.decoder_channels),
            "in_channels": in_channels,
            # the input is the image, then its aligned defect-free reference (3 + 3 channels)
            "reference": sc.reference,
            "gate": sc.gate,
            "classes": ["ok", "defect"],
            # gate: NG probability at or above this keeps the mask; below, the mask is empty
            "threshold": gate_threshold if sc.gate else None,
            "mask_threshold": sc.mask_threshold,
            "min_region": sc.min_region,
        },
    )


def load_segmenter(
    folder: Path, meta: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    from defectkit.config import ModelConfig, SegmentConfig
    from defectkit.models.segmenter import build_segmenter

    meta = meta or read_meta(folder)
    if meta["task"] != "segment":
        raise BundleError(f"{folder} holds a {meta['task']} model, not a segmenter")
    config = SegmentConfig(
        arch=meta["arch"],
        encoder_depth=meta["encoder_depth"],
        decoder_channels=tuple(meta["decoder_channels"]),
        gate=meta["gate"],
    )
    model, _, _ = build_segmenter(
        ModelConfig(backbone=meta["backbone"]), config, meta["in_channels"], pretrained=False
    )
    model.load_state_dict(load_file(str(Path(meta["folder"]) / WEIGHTS_FILE)))
    return model.eval(), meta


def load_model(
    folder: Path, meta: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Whatever task the bundle holds; `meta` from read_meta saves checking the weights'
    checksum a second time."""
    from defectkit.tasks import get_task

    meta = meta or read_meta(folder)
    try:
        task = get_task(meta["task"])
    except ValueError as error:
        raise BundleError(f"{folder}: {error} (a bundle made by a newer defectkit?)") from None
    return task.load_model(folder, meta), meta
