"""A new dataset without a recipe: settings drawn from the data and the device, each with the
reason it was chosen. `defectkit train --task T --data PATH` starts from these; a recipe
(--config) and --set go on top. What is drawn:

- the layout (auto-detected), the defect-free class (good / ok / free / normal / defect-free,
  or the empty-mask images of an image + mask layout), the NG class of a two-class OK/NG set;
- the input side and resize mode from the image sizes: long images (median aspect >= 1.5)
  keep their aspect ratio (pad), never squashed; large images with small details (detect and
  segment, short side >= 2.5x the input side) are cut into windows at full resolution (tile);
- epochs and batch size from the number of training images and the device (a CPU budget is
  smaller), the official split where the layout has one, always a validation part;
- the few-shot path (frozen features of every flip and quarter turn of each training image,
  a head started at the class means) when a class has under 30 images, i.e. about 20 to
  train on (fine-tuning would memorise them); the aligned reference stacked where every
  image has one (DeepPCB templates)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from PIL import Image

from defectkit.data.samples import SampleSet, ok_class

SIZES_READ = 200  # image headers read to learn the sizes
LONG_ASPECT = 1.5  # median longer / shorter side from which images keep their aspect ratio
TILE_FACTOR = 2.5  # short side over input side from which detect / segment tile
FEW_IMAGES = 30  # a class with fewer images: the few-shot path, not fine-tuning
FEWSHOT_EPOCHS = 30  # of the head on feature rows (8 per image): seconds, whatever the data

# per task: (smallest, largest on CPU, largest on GPU) input side; training images x epochs
# aimed at (bounded); epochs (least, most on CPU, most on GPU); batch size
SIDES = {
    "classify": (64, 160, 224),
    "anomaly": (128, 224, 224),
    "segment": (128, 256, 320),
    "detect": (128, 512, 640),
}
EPOCH_BUDGET = {"classify": 8000, "segment": 6000, "detect": 12000}
EPOCHS = {"classify": (4, 12, 30), "segment": (10, 15, 40), "detect": (12, 16, 40)}
BATCH = {"classify": 32, "segment": 8, "detect": 8}


def image_sizes(samples: Sequence[Any], limit: int = SIZES_READ) -> list[tuple[int, int]]:
    """(width, height) of up to `limit` images spread over the list, from their headers."""
    step = max(1, len(samples) // limit)
    sizes = []
    for sample in list(samples)[::step][:limit]:
        try:
            with Image.open(sample.image) as image:
                sizes.append(image.size)
        except OSError:
            continue  # the image checks name every unreadable file later
    return sizes


def _floor32(value: float) -> int:
    return max(32, int(value) // 32 * 32)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def draw_defaults(task: str, dataset: SampleSet, device: str = "auto") -> tuple[dict, list[str]]:
    """Config values (nested, as --set gives them) for `task` on `dataset`, and one note per
    choice saying why."""
    if task not in SIDES:
        raise ValueError(f"unknown task {task!r}; one of {', '.join(SIDES)}")
    device = resolve_device(device)
    gpu = device.startswith("cuda")
    values: dict[str, Any] = {"task": task, "data": {"root": str(dataset.root)}}
    notes: list[str] = []
    data, split, train = values["data"], {}, {}
    data["format"] = dataset.layout
    notes.append(f"data.format={dataset.layout}: the layout found in {dataset.root}")

    sizes = image_sizes(dataset.samples)
    if sizes:
        short = statistics.median(min(w, h) for w, h in sizes)
        aspect = statistics.median(max(w, h) / min(w, h) for w, h in sizes)
        smallest, cpu_cap, gpu_cap = SIDES[task]
        cap = gpu_cap if gpu else cpu_cap
        side = min(cap, max(smallest, _floor32(short)))
        resize = "squash"
        if task in ("segment", "detect") and short >= TILE_FACTOR * cap:
            resize, side = "tile", cap
            why = f"short side >= {TILE_FACTOR}x the input: windows at full resolution"
        elif aspect >= LONG_ASPECT:
            resize = "pad"
            why = f"median aspect ratio {aspect:.2f}:1: the aspect ratio kept, never squashed"
        else:
            why = f"median aspect ratio {aspect:.2f}:1, close to square"
        data["image_size"], data["resize"] = side, resize
        notes.append(
            f"data.image_size={side}, data.resize={resize}: median short side {short:.0f} px "
            f"({len(sizes)} image headers read), at most {cap} px on the {device}; {why}"
        )

    if all(s.meta.get("split") in ("train", "test") for s in dataset.samples):
        split["method"] = "official"
        notes.append("split.method=official: the layout lists its own train and test images")
    split["val_fraction"] = 0.1
    counts = dataset.counts()

    if task == "anomaly":
        good = ok_class(dataset.classes)
        if good is not None:
            values["anomaly"] = {"good_label": good}
            notes.append(f"anomaly.good_label={good}: the class named as defect-free")
    if task == "classify":
        good = ok_class(dataset.classes)
        if len(dataset.classes) == 2 and good is not None:
            positive = next(c for c in dataset.classes if c != good)
            values["eval"] = {"positive": positive}
            notes.append(f"eval.positive={positive}: the class beside the defect-free {good!r}")
        fewest = min(counts.values()) if counts else 0
        if fewest < FEW_IMAGES:
            train["strategy"] = "fewshot"
            notes.append(
                f"train.strategy=fewshot: the smallest class has {fewest} images (< "
                f"{FEW_IMAGES}); fine-tuning would memorise them"
            )
    if task in ("segment", "detect") and all(s.reference for s in dataset.samples):
        values[task] = {"reference": True}
        notes.append(f"{task}.reference=true: every image has an aligned reference")
    if task == "segment" and not counts.get(ok_class(dataset.classes) or "", 0):
        values.setdefault("segment", {})["gate"] = False
        values["segment"]["balance"] = False
        notes.append("segment.gate=false: every image shows a defect, nothing to tell OK from")

    if task in EPOCH_BUDGET and train.get("strategy") != "fewshot":  # its own epochs below
        if split.get("method") == "official":
            n_train = sum(s.meta.get("split") == "train" for s in dataset.samples)
        else:
            n_train = len(dataset) * 0.8
        n_train = max(1, round(n_train * 0.9))  # less the validation part
        least, cpu_most, gpu_most = EPOCHS[task]
        epochs = min(
            gpu_most if gpu else cpu_most, max(least, math.ceil(EPOCH_BUDGET[task] / n_train))
        )
        train["epochs"], train["batch_size"] = epochs, BATCH[task]
        notes.append(
            f"train.epochs={epochs}, train.batch_size={BATCH[task]}: about {n_train} training "
            f"images, {EPOCH_BUDGET[task]} image passes aimed at, at most "
            f"{gpu_most if gpu else cpu_most} epochs on the {device}"
        )
    if train.get("strategy") == "fewshot":
        train.update(epochs=FEWSHOT_EPOCHS, lr=1e-3, head_lr_mult=1.0)
        notes.append(
            f"train.epochs={FEWSHOT_EPOCHS}, lr=1e-3, head_lr_mult=1: the head alone trains, "
            "on feature rows computed once"
        )
    if task == "detect":
        train.update(lr=5e-4, head_lr_mult=1.0, warmup_epochs=1)
        notes.append(
            "train.lr=5e-4, head_lr_mult=1, warmup 1 epoch: a detector's head and "
            "trunk at one rate (10x on a fresh FPN head diverged)"
        )
    values["split"], values["train"] = split, train
    return values, notes


def summary_lines(dataset: SampleSet) -> list[str]:
    """What a dry run shows of the data."""
    counts = dataset.counts()
    sizes = image_sizes(dataset.samples)
    lines = [
        f"{dataset.root}: {dataset.layout} layout, {len(dataset)} images, "
        f"{len(dataset.classes)} classes",
        "  " + ", ".join(f"{c} {n}" for c, n in counts.items()),
    ]
    if sizes:
        widths, heights = zip(*sizes, strict=True)
        lines.append(
            f"  sizes (of {len(sizes)} read): width {min(widths)}..{max(widths)}, height "
            f"{min(heights)}..{max(heights)}"
        )
    boxes = sum(len(s.boxes) for s in dataset.samples)
    masks = sum(s.mask is not None for s in dataset.samples)
    references = sum(s.reference is not None for s in dataset.samples)
    lines.append(f"  masks {masks}, boxes {boxes}, references {references}")
    return lines
