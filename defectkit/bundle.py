"""The model bundle: safetensors weights + bundle.json metadata, everything needed to run the
model elsewhere (task, classes, preprocessing, input size, threshold, backbone, versions,
checksum), and the ONNX file `defectkit export` adds. Loading never unpickles. The file
format only: a bundle's model is built by its task (runtime/graph.py `load_model`). Reading
bundle.json and finding the checked ONNX file need no torch (a line PC running ONNX Runtime
alone); writing and loading weights import it where they do."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defectkit._version import __version__
from defectkit.config import RunConfig
from defectkit.runs import sha256_of, write_json

if TYPE_CHECKING:
    import torch
    from torch import nn

    from defectkit.models.backbones import Preprocessing

BUNDLE_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "bundle.json"
ONNX_FILE = "model.onnx"


class BundleError(ValueError):
    """A bundle folder that is incomplete, damaged or from an unknown format version."""


def write_bundle(
    folder: Path,
    model: nn.Module,
    config: RunConfig,
    prep: Preprocessing,
    task_meta: dict[str, Any],
) -> Path:
    """model.safetensors + bundle.json: what every task records, plus `task_meta`."""
    import timm
    import torch
    from safetensors.torch import save_file

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
            "defectkit": __version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
        },
        "weights_sha256": sha256_of(weights),
    }
    write_json(folder / META_FILE, meta)
    return folder


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


def load_weights(meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The bundle's tensors (safetensors: nothing is unpickled)."""
    from safetensors.torch import load_file

    return load_file(str(Path(meta["folder"]) / WEIGHTS_FILE))


def onnx_path(meta: dict[str, Any]) -> Path:
    """The bundle's ONNX file, checked against the checksum recorded at export."""
    record = meta.get("onnx")
    folder = Path(meta["folder"])
    if not record or not (folder / record["file"]).is_file():
        raise BundleError(f"{folder} has no ONNX model: run `defectkit export {folder}` first")
    path = folder / record["file"]
    if sha256_of(path) != record["sha256"]:
        raise BundleError(
            f"{path} does not match the checksum in {folder / META_FILE}: export it again "
            f"with `defectkit export {folder}`"
        )
    return path
