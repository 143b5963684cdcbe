"""Run configuration: frozen dataclasses with documented defaults, loaded from YAML,
overridden by `--set section.key=value`, type-checked from the fields, written back to the run."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RECIPES_DIR = Path(__file__).parent / "configs"
# eval.threshold_rule (metrics.choose_threshold) and detect.box_rule
# (tasks/detect/evaluate.choose_box_thresholds)
THRESHOLD_RULES = ("youden", "recall", "specificity")
BOX_RULES = ("f1", "precision")


@dataclass(frozen=True)
class DataConfig:
    root: str = ""  # dataset folder (or a reader's own root, e.g. "elpv" for the pip package)
    format: str = "auto"  # a reader name from `defectkit data formats`, or auto-detect
    label_mode: str = "default"  # reader-specific: ELPV "binary" (OK/NG) or "4class"
    # the folder of the label files (labelme .json, YOLO .txt, VOC .xml, masks) where they
    # are not beside the images; "" = beside them, or a sibling labels/, label/,
    # annotations/, masks/ or ground_truth/ folder found by itself
    labels: str = ""
    image_size: int = 224  # square side the network sees; images of any size are resized
    cache_images: bool = True  # keep decoded images in RAM: decoding dominates small CPU runs
    augment: str = "default"  # "default", "light" or "none" (see data/transforms.py)
    # "squash": the whole image to a square; "pad": keep the aspect ratio, longer side to
    # image_size, edges replicated into the rest (anomaly maps are cropped back); "tile"
    # (segment): image_size windows at the image's own resolution, see data/tiles.py
    resize: str = "squash"
    interpolation: str = ""  # "bilinear" or "bicubic"; empty: what the backbone's weights used
    num_workers: int = 0  # DataLoader workers; 0 is fastest on 2 cores with cached images
    # every image, mask and reference is decoded once before training: "error" stops with all
    # bad files named; "skip" leaves their samples out and lists them in the run and report
    on_bad_image: str = "error"


@dataclass(frozen=True)
class SplitConfig:
    # stratified | grouped (by Sample.group, else look-alike images: data inspect shows them)
    # | kfold
    # | manifest | official (the layout's own lists: MVTec AD, DeepPCB)
    method: str = "stratified"
    test_fraction: float = 0.2  # PROTOCOLS.md: first int(0.8 n) of each class train
    val_fraction: float = 0.1  # carved out of train only; 0 keeps the last epoch
    seed: int = 0  # shuffles the split (the run's own seed is train.seed)
    folds: int = 5  # kfold only
    fold: int = 0  # kfold only: which fold is the test part
    # "label", "name_prefix" (file name before the last "_") and/or Sample.meta keys (ELPV "type")
    stratify_by: tuple[str, ...] = ("label",)
    manifest: str = ""  # method=manifest: path of a split.json (or a run folder) to reuse
    # images of one physical part stay on one side of every split: "folder" (the image's
    # folder), "regex:<pattern>" (the file name's first captured group, e.g.
    # regex:^(part\d+)_), or "csv:<file>:<column>" (a CSV naming each image's group)
    group_by: str = ""
    # learning curves and few-shot checks: keep at most this many training images of each
    # class (the name-sorted training list shuffled with per_class_seed, the first k; nested
    # in k for one seed); 0 keeps them all. Validation, when asked for, is carved out first.
    per_class: int = 0
    per_class_seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "tf_efficientnet_lite0"  # any timm name; this one has offline weights
    pretrained: bool = True  # ImageNet weights, resolved as models/backbones.py says
    weights: str = ""  # explicit weights file, tried before cache / package / download
    weights_sha256: str = ""  # expected sha256 of `weights`; checked when given
    drop_rate: float = 0.2  # dropout before the classifier head


@dataclass(frozen=True)
class TrainConfig:
    # scratch | frozen | finetune | freeze_then_unfreeze | fewshot (frozen features of
    # every training image under `views`, a head started at the class means)
    strategy: str = "finetune"
    views: str = "dihedral"  # fewshot: none | flips (4) | dihedral (8: flips and 90° turns)
    unfreeze_epoch: int = 2  # freeze_then_unfreeze: epochs with the backbone frozen
    init_from: str = ""  # warm start: an earlier run folder or checkpoint of this task
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3  # backbone learning rate; the head gets lr * head_lr_mult
    head_lr_mult: float = 10.0  # a fresh head learns faster than pretrained features
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"  # cosine | step | exponential | constant
    warmup_epochs: int = 0  # linear warm-up before the schedule
    step_size: int = 5  # step schedule: epochs between decays
    gamma: float = 0.1  # step / exponential decay factor
    # ce | focal | ordinal (grades: classes in name order, cross-entropy + ordinal_weight x
    # the squared earth mover's distance between predicted and true grade distributions)
    loss: str = "ce"
    focal_gamma: float = 2.0
    ordinal_weight: float = 1.0
    label_smoothing: float = 0.0
    class_weights: str = "none"  # none | balanced (inverse class frequency in the loss)
    sampler: str = "none"  # none | oversample | undersample
    early_stopping: int = 0  # patience in epochs on the validation score; 0 = off
    # batches whose gradients add up before one optimiser step: an effective batch of
    # batch_size x accumulate (x the processes under torchrun) within a small memory
    accumulate: int = 1
    # a moving average of the weights (decay per optimiser step, e.g. 0.9998; 0 = off) that
    # validation, the best epoch and the bundle use, as YOLO and EfficientDet train
    ema: float = 0.0
    amp: bool = True  # mixed precision on CUDA; ignored on the CPU
    # channels-last memory layout of the convolution weights (segment, detect) and of the
    # images (segment): 1.35x faster segment training steps on this CPU's oneDNN kernels,
    # about 1.1x for the NEU-DET detector
    channels_last: bool = False
    # torchrun on GPUs: batch-norm statistics over the global batch (SyncBatchNorm)
    sync_batchnorm: bool = False
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default


@dataclass(frozen=True)
class EvalConfig:
    positive: str = ""  # NG class for ROC and thresholds; "" = "ng" when present
    threshold_rule: str = "youden"  # youden | recall | specificity
    target: float = 0.95  # target NG recall or OK specificity for those rules
    worst_k: int = 16  # mistakes shown in the report
    # test-time augmentation of the shipped model over these views of each image, none |
    # flips (4) | dihedral (8: flips and quarter turns). classify: its class probabilities
    # are their mean; detect: each view's boxes, mapped back, are pooled with the image's own
    # before NMS. The thresholds, the test metrics and the bundle's graph all use them.
    tta: str = "none"


@dataclass(frozen=True)
class AnomalyConfig:
    method: str = "patchcore"  # a name from defectkit.models.anomaly.list_methods()
    layers: tuple[int, ...] = (2, 3)  # backbone stages whose features describe a patch
    coreset_ratio: float = 0.01  # memory bank size as a fraction of all training patches ...
    max_coreset: int = 10000  # ... bounded, so memory and scoring time stay bounded
    projection_dim: int = 64  # random projection used only to pick the coreset
    pool: int = 200000  # patches the coreset is picked from (a random subset beyond that)
    good_label: str = ""  # the defect-free class; "" = good / free / ok, whichever exists
    false_alarm_rate: float = 0.01  # calibrated threshold: this share of good images flagged
    blur_sigma: float = 4.0  # Gaussian smoothing of the map, in pixels of the input size
    epochs: int = 20  # autoencoder only: reconstruction training epochs
    # autoencoder only: each batch's loss is the mean error of its hardest patches, this
    # share of them (1 = every patch, the plain mean); rare defect-free patches get learnt
    hard_fraction: float = 0.02


@dataclass(frozen=True)
class SegmentConfig:
    arch: str = "unet"  # unet | unetplusplus | fpn | deeplabv3plus (segmentation_models_pytorch)
    encoder_depth: int = 5  # 3..5 downsamplings of the encoder: fewer keep small defects
    decoder_channels: tuple[int, ...] = ()  # unet/unet++: () = (256, 128, 64, 32, 16)[-depth:]
    reference: bool = False  # stack the aligned defect-free reference (DeepPCB template) as input
    # fcos: which locations learn which box (models/detector.py): centre (torchvision's) |
    # line (follows thin, long boxes: cracks, scratches) | atss (each box's locations chosen
    # by its own IoU bar: adaptive training sample selection) | auto (line where a quarter
    # of the training boxes are 5:1 or longer, else centre)
    assign: str = "auto"
    loss: str = "bce_dice"  # bce | dice | bce_dice | focal | tversky | lovasz
    bce_weight: float = 0.8  # bce_dice: the steel study's 0.8 BCE + 0.2 Dice
    dice_weight: float = 0.2
    focal_gamma: float = 2.0
    tversky_alpha: float = 0.3  # weight of false positives; beta of false negatives
    tversky_beta: float = 0.7
    train_on: str = "all"  # all | ng (the mask loss sees defect images only)
    balance: bool = True  # draw NG and OK images equally often
    freeze_epochs: int = 0  # encoder frozen for the first N epochs (the study: 5)
    # the stem and the encoder's first N stages keep their ImageNet weights for the whole
    # run: the backward pass through the high-resolution stages is most of a CPU step
    frozen_stages: int = 0
    # recompute the encoder's blocks in the backward pass instead of keeping their outputs:
    # ~0.9 GB less at batch 16, 224 px (Lite0 U-Net); an unfrozen epoch takes ~35% longer
    # on a CPU (magnetic tile, 2 cores: 3388 -> 2510 MB peak, 135 -> 186 s)
    grad_checkpointing: bool = True
    gate: bool = True  # an OK/NG head on the encoder; images it calls OK get an empty mask
    gate_weight: float = 0.2  # weight of the OK/NG head's loss
    mask_threshold: float = 0.5  # pixel probability for "defect"
    min_region: int = 0  # predicted regions smaller than this (pixels of the image) are dropped
    region_iou: float = 0.33  # a true region is found when a predicted one overlaps this much


@dataclass(frozen=True)
class DetectConfig:
    # fcos | retinanet | faster_rcnn (torchvision, on the backbone through an FPN P3-P7)
    arch: str = "fcos"
    fpn_channels: int = 128  # feature pyramid width (torchvision's COCO models: 256)
    head_convs: int = 4  # FCOS: convolutions in each head branch (2 halves the head's cost)
    reference: bool = False  # stack the aligned defect-free reference (DeepPCB template) as input
    # how the pretrained first convolution starts on image + reference (models/backbones.py):
    # difference (the image's filters plus the same on image - reference) | mean (of both)
    reference_start: str = "difference"
    # fcos: which locations learn which box (models/detector.py): centre (torchvision's) |
    # line (follows thin, long boxes: cracks, scratches) | auto (line where a quarter of the
    # training boxes are 5:1 or longer)
    assign: str = "auto"
    # retinanet, faster_rcnn: base anchor size per level
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    freeze_epochs: int = 0  # backbone frozen for the first N epochs (freeze then unfreeze)
    # the trunk's stem and first N stages keep their ImageNet weights and batch-norm statistics
    # for the whole run (Detectron2's FREEZE_AT=2, torchvision's trainable_backbone_layers=3):
    # 2 on Lite0 at 256 px makes a CPU training step about a third shorter
    frozen_stages: int = 0
    scale_jitter: float = 0.0  # training zoom in / out by up to this share (0.25: 0.75..1.25)
    # the share of training inputs made of four images' crops (YOLOv4's mosaic, at the
    # input's own scale: data/detection.py), none in the last mosaic_off_epochs epochs
    # (YOLOv8's close_mosaic: the last epochs see whole images, as the model will)
    mosaic: float = 0.0
    mosaic_off_epochs: int = 0
    # how the boxes of eval.tta's views become one: nms (pooled, the best view's box kept) |
    # wbf (weighted box fusion: each view's best overlapping box averaged, weighted by its
    # score; the score their sum over the views: models/detector.fuse_views)
    tta_merge: str = "nms"
    score_floor: float = 0.05  # boxes scored below this are dropped before NMS
    nms_iou: float = 0.6  # overlapping boxes of one class above this IoU: the best is kept
    max_boxes: int = 100  # boxes kept per image
    # each class's box threshold, chosen on the validation images' boxes: f1 (the best F1
    # of box precision and recall at match_iou) | precision (the most recall at box
    # precision >= box_target, the best F1 where no threshold reaches it); halfway between
    # the chosen box's score and the next lower one (tasks/detect/evaluate.py)
    box_rule: str = "f1"
    box_target: float = 0.7
    threshold: float = 0.3  # a class's box threshold where validation has none of its boxes
    match_iou: float = 0.5  # a true box is found by a predicted one overlapping this much


@dataclass(frozen=True)
class RunConfig:
    task: str = "classify"  # classify | segment | anomaly | detect (`defectkit recipes`)
    name: str = ""  # run folder name; "" = <task>-<timestamp>
    out_dir: str = "runs"  # the run folder goes in here
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)

    @property
    def paired(self) -> bool:
        """Whether the task's model takes each image with its aligned reference (segment
        and detect have `reference`; classify and anomaly take the image alone)."""
        return bool(getattr(getattr(self, self.task, None), "reference", False))


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclasses."""


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Turn a YAML or command-line value into the field's declared type."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        item_kind = typing.get_args(kind)[0]
        texts = [str(item).strip() for item in items if str(item).strip()]
        return tuple(_coerce(text, item_kind, where) for text in texts)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if kind in (int, float):
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}") from None
        if kind is int and isinstance(value, float) and value != number:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return number
    if kind is str:
        return "" if value is None else str(value)
    raise ConfigError(f"{where}: unsupported field type {kind}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known keys here: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name}: expected a mapping of keys")
            kwargs[name] = _build(kind, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, kind, prefix + name)
    return cls(**kwargs)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["train.lr=0.01", "data.root=/x"]` -> nested dict."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: write it as section.key=value, e.g. train.lr=0.01")
        dotted, value = pair.split("=", 1)
        node = nested
        *parents, leaf = dotted.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value) if value.strip() else ""
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_recipe(name_or_path: str) -> Path:
    """A YAML path, or the name of a recipe shipped in defectkit/configs."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a shipped recipe ({names})")


def load_config(
    source: str | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults <- `base` (values drawn from the data) <- YAML recipe <- `--set` overrides,
    checked against the dataclasses."""
    values: dict[str, Any] = {}
    if source:
        path = resolve_recipe(source)
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        values = loaded
    values = _merge(_merge(base or {}, values), parse_overrides(overrides or []))
    return _build(RunConfig, values, "")


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    return {
        key: {k: plain(v) for k, v in value.items()} if isinstance(value, dict) else value
        for key, value in dataclasses.asdict(config).items()
    }


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    return _build(RunConfig, values, "")


def save_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def list_recipes() -> dict[str, str]:
    """Shipped recipe name -> the first line of its leading comment."""
    recipes = {}
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        comment = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            comment.append(line.lstrip("# ").strip())
        text = " ".join(comment)
        sentence = text.split(". ")[0].rstrip(".")
        recipes[path.stem] = sentence if len(sentence) <= 120 else sentence[:117] + "..."
    return recipes


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the dataclass source (on its line, or the lines above)."""
    import inspect
    import re

    comments, pending = {}, []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"(\w+): [^=]+=.*?(?:#\s*(.*))?$", stripped)
        if match:
            comments[match.group(1)] = " ".join([*pending, match.group(2) or ""]).strip()
        pending = []
    return comments


def describe_config(config: RunConfig, readers: dict[str, tuple[str, ...]] | None = None) -> str:
    """Every key as `section.key: value  # what it means`, in the order of the dataclasses,
    for `defectkit config show`; `readers`: each task's sections (Task.sections), to say
    which tasks read a section."""
    lines = []
    top = field_comments(RunConfig)
    for field_ in dataclasses.fields(config):
        value = getattr(config, field_.name)
        if not dataclasses.is_dataclass(value):
            note = top.get(field_.name, "")
            lines.append(f"{field_.name}: {value!r}" + (f"  # {note}" if note else ""))
            continue
        used = [task for task, sections in (readers or {}).items() if field_.name in sections]
        lines.append(f"\n{field_.name}:" + (f"  (read by {', '.join(used)})" if used else ""))
        notes = field_comments(type(value))
        for inner in dataclasses.fields(value):
            shown = getattr(value, inner.name)
            shown = list(shown) if isinstance(shown, tuple) else shown
            note = notes.get(inner.name, "")
            lines.append(f"  {inner.name}: {shown!r}" + (f"  # {note}" if note else ""))
    return "\n".join(lines)
