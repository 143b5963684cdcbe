"""What the runtime asks of the anomaly task: its bundle's model (memory bank, Gaussians
or decoder inside), the inference graph's head (the smoothed map and its maximum), the
decision per image against the calibrated threshold, `eval` with image and pixel metrics,
and the command line's summaries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defectkit._version import __version__
from defectkit.bundle import BundleError, load_weights, write_bundle
from defectkit.config import RunConfig
from defectkit.data.prepare import content_box
from defectkit.data.transforms import to_image_size
from defectkit.models.anomaly import smooth_maps
from defectkit.models.backbones import Preprocessing
from defectkit.predictions import decide_anomaly, normalisation_of

# the config sections this task reads (its report and `config show` list these)
SECTIONS = ("data", "split", "model", "train", "anomaly")

OUTPUTS = ("scores", "maps")
ANOMALOUS = "anomalous"  # the NG class name of every anomaly bundle
# written after the fit: --resume reuses the fitted model, never fits again
CHECKPOINT = "fitted.pt"


def save_bundle(
    folder: Path,
    model: nn.Module,
    config: RunConfig,
    prep: Preprocessing,
    threshold: float,
    good_label: str,
    normalisation: dict[str, float],
) -> Any:
    """Backbone weights and fitted state (memory bank, Gaussians) in one file, so the bank
    can never be lost or mixed up."""
    ac = config.anomaly
    return write_bundle(
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


def load_model(folder: Path, meta: dict[str, Any]) -> nn.Module:
    """An anomaly method with its fitted state (memory bank, Gaussians or decoder)."""
    from defectkit.models.anomaly import create_method

    options = meta["method_options"]
    model = create_method(
        meta["method"], backbone=meta["backbone"], layers=tuple(options["layers"]), pretrained=False
    )
    try:
        load_fitted_state(model, load_weights(meta))
    except RuntimeError as error:  # keys or shapes of another form of the method
        written = meta.get("versions", {}).get("defectkit", "an unknown version")
        raise BundleError(
            f"{folder}: its {meta['method']} state does not fit the {meta['method']} of "
            f"this defectkit {__version__} (the bundle was written by defectkit {written}, "
            "with another form of the method): retrain it (`defectkit train` with the run's "
            f"config.yaml), or serve it with the defectkit that wrote it. {error}"
        ) from error
    return model.eval()


def load_fitted_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """A fitted state into a fresh method: its fitted buffers (memory bank, Gaussians)
    start empty, so each gets the saved tensor's size first."""
    buffers = dict(model.named_buffers())
    for name, tensor in state.items():
        if name in buffers and buffers[name].shape != tensor.shape:
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            owner.register_buffer(leaf, torch.empty_like(tensor))
    model.load_state_dict(state)


def graph(
    model: nn.Module, images: torch.Tensor, *, size: int, blur_sigma: float = 0.0, **options: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    _, patch_maps = model(images)
    maps = smooth_maps(patch_maps.float(), size, blur_sigma)
    return maps.flatten(1).amax(1), maps


def decide(inspector, names: Sequence[str], outputs: list, images: Sequence[Any]) -> list:
    """Each smoothed map cropped to its image's content; its maximum, the raw image score,
    decides OK/NG against the calibrated threshold; the map resized to the image's size."""
    norm = normalisation_of(inspector.meta)
    decisions = []
    for name, amap, image in zip(names, outputs[1], images, strict=True):
        size = (image.height, image.width)
        top, left, h, w = content_box(*size, inspector.size, inspector.resize)
        raw = float(amap[top : top + h, left : left + w].max())
        full = to_image_size(amap, size, inspector.size, inspector.resize)
        decisions.append(
            decide_anomaly(
                name, raw, full, inspector.classes, inspector.threshold, norm, inspector.raw_maps
            )
        )
    return decisions


def score_names(meta: dict[str, Any]) -> list[str]:
    return ["anomaly_score", meta["classes"][1]]


def _maybe(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary(result: dict[str, Any]) -> str:
    return (
        f"image AUROC {result['image_auroc']:.4f}  pixel AUROC {_maybe(result['pixel_auroc'])}"
        f"  F1-max {result['f1_max']:.4f}  F1 at calibrated threshold "
        f"{result['f1_calibrated']:.4f}\nfit {result['fit_seconds']:.1f} s, "
        f"{result['ms_per_image']:.1f} ms per image, peak memory {result['peak_rss_mb']:.0f} MB"
    )


def eval_summary(result: dict[str, Any]) -> str:
    return (
        f"image AUROC {result['image_auroc']:.4f}  pixel AUROC "
        f"{_maybe(result['pixel_auroc'])}  F1 at the bundle's threshold "
        f"{result['f1_calibrated']:.4f} on {result['images']} images"
    )


def shown_threshold(meta: dict[str, Any]) -> float:
    """Scores leave the bundle normalised: 0.5 is the calibrated threshold."""
    return 0.5


# its good images are split into fit / calibration / test its own way: no k-fold
KFOLD = False


def truth(sample: Any, classes: Sequence[str]) -> str:
    """OK for an image of the good class (the bundle's first), else NG."""
    return "OK" if sample.label == classes[0] else "NG"
