"""Every setting held against the data before any work is spent: the class names a config
names (eval.positive, anomaly.good_label), the split's keys and whether each class has the
images its parts need, the input size the model can take, and class folders without images.
Data that cannot teach the task is refused too: a segment run reads masks until one marks
a defect, a detect run the image headers of its boxed images (boxes of whole images). All
problems are gathered into one error, each with the setting, what the data offers and the
fix. (data.label_mode is checked by the reader: data/formats/base.py.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from defectkit.config import BOX_RULES, THRESHOLD_RULES, ConfigError, RunConfig
from defectkit.data.images import is_image
from defectkit.data.samples import DatasetError, SampleSet, ok_class
from defectkit.data.transforms import VIEWS
from defectkit.engine.losses import LOSSES

SPLIT_KEYS = ("label", "name_prefix")  # besides the samples' own meta fields
MIN_SIZE, MAX_SIZE = 32, 4096


def _empty_class_folders(dataset: SampleSet) -> list[str]:
    """Class folders of an image + mask layout with no image in them (the class_folders
    reader refuses its own)."""
    if dataset.layout != "image_mask":
        return []
    root = Path(dataset.root)
    return sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir()
        and not d.name.startswith(".")
        and d.name not in ("images", "masks")
        and not any(p.is_file() and is_image(p) for p in d.rglob("*"))
    )


def calibration_problems(config: RunConfig) -> list[str]:
    """The rules that turn scores into decisions, checked before training rather than after
    it (they are applied last; `defectkit calibrate` changes them)."""
    problems = []
    ev, dc = config.eval, config.detect
    if ev.threshold_rule not in THRESHOLD_RULES:
        problems.append(
            f"eval.threshold_rule={ev.threshold_rule!r} is not one of {list(THRESHOLD_RULES)} "
            "(youden: the best recall + specificity; recall / specificity: reach eval.target)"
        )
    if not 0 < ev.target <= 1:
        problems.append(
            f"eval.target={ev.target} is outside (0, 1]: an NG recall or OK specificity"
        )
    if config.task == "detect":
        if dc.box_rule not in BOX_RULES:
            problems.append(
                f"detect.box_rule={dc.box_rule!r} is not one of {list(BOX_RULES)} (f1: the best "
                "box F1; precision: the most recall at box precision >= detect.box_target)"
            )
        if not 0 < dc.box_target <= 1:
            problems.append(f"detect.box_target={dc.box_target} is outside (0, 1]: a box precision")
        if not 0 <= dc.score_floor < 1 or not 0 < dc.threshold < 1:
            problems.append(
                f"detect.score_floor={dc.score_floor} / detect.threshold={dc.threshold}: box "
                "scores lie in (0, 1); the floor in [0, 1), the fallback threshold in (0, 1)"
            )
    return problems


def augmentation_problems(config: RunConfig) -> list[str]:
    """Detect's box-aware augmentation settings, each a share or a count in range."""
    dc, problems = config.detect, []
    if config.task != "detect":
        return problems
    if not 0 <= dc.mosaic <= 1:
        problems.append(
            f"detect.mosaic={dc.mosaic} is outside [0, 1]: the share of training inputs made "
            "of four images (0 turns mosaic off; 0.5 is a common start)"
        )
    if not 0 <= dc.mosaic_off_epochs <= config.train.epochs:
        problems.append(
            f"detect.mosaic_off_epochs={dc.mosaic_off_epochs} is outside 0..train.epochs "
            f"({config.train.epochs}): the last epochs trained on whole images"
        )
    if not 0 <= dc.scale_jitter < 1:
        problems.append(
            f"detect.scale_jitter={dc.scale_jitter} is outside [0, 1): the zoom in / out "
            "share (0.25: 0.75..1.25)"
        )
    return problems


def _too_small(dataset: SampleSet, config: RunConfig) -> list[str]:
    """Classes of a classifier that the split cannot place in training, validation and test
    (each class needs all three for its metrics to mean anything)."""
    split = config.split
    if config.task != "classify" or split.method not in ("stratified", "kfold"):
        return []
    if tuple(split.stratify_by) != ("label",):
        return []  # strata finer than the class: their own rounding
    problems = []
    for label, n in sorted(dataset.counts().items()):
        if split.method == "kfold":
            test, train = n // split.folds, n - -(-n // split.folds)  # the thinnest fold
        else:
            train = int((1 - split.test_fraction) * n)
            test = n - train
        val = train - int((1 - split.val_fraction) * train) if split.val_fraction > 0 else None
        if val is not None:
            train -= val
        if min(train, test, 1 if val is None else val) < 1:
            parts = f"train {train}, " + ("" if val is None else f"validation {val}, ")
            problems.append(
                f"class {label!r} has {n} image(s): too few for split.test_fraction="
                f"{split.test_fraction}, split.val_fraction={split.val_fraction} ({parts}test "
                f"{test}); add images of it, merge it into another class, or leave it out"
            )
    return problems


def _thin_strata(dataset: SampleSet, config: RunConfig) -> list[str]:
    """stratify_by keys that cut the data into strata too small to reach the training part
    (a key of one dataset's file names read on another's: every image its own stratum)."""
    split = config.split
    if config.task == "anomaly" or tuple(split.stratify_by) == ("label",):
        return []  # the anomaly task splits its own way; classes are checked by _too_small
    if split.method != "stratified" or not all(
        k in SPLIT_KEYS or all(k in s.meta for s in dataset.samples) for k in split.stratify_by
    ):
        return []
    strata = Counter(tuple(s.key(k) for k in split.stratify_by) for s in dataset.samples)
    stranded = sum(n for n in strata.values() if int((1 - split.test_fraction) * n) < 1)
    if stranded * 2 <= len(dataset):
        return []
    return [
        f"split.stratify_by={list(split.stratify_by)} cuts the {len(dataset)} images of "
        f"{dataset.root} into {len(strata)} groups, {stranded} images in groups too small to "
        "give a training image (they would all be test images): --set split.stratify_by=label"
    ]


def _no_mask_marks_a_defect(dataset: SampleSet, config: RunConfig) -> list[str]:
    """A segmenter taught on masks that are all empty learns nothing: the defects are marked
    elsewhere, or the images are all good (masks are read until the first that marks one)."""
    if config.task != "segment" or not any(s.mask is not None for s in dataset.samples):
        return []
    from defectkit.data.segmentation import read_mask

    if any(s.boxes for s in dataset.samples):
        return []
    if any(read_mask(s).any() for s in dataset.samples if s.mask is not None):
        return []
    return [
        f"every mask of {dataset.root} ({dataset.layout}) is empty: no pixel marks a defect, "
        "so there is nothing to segment. If the defects are marked in other files, point at "
        "them (masks/, a label folder); if the images are all defect-free, train "
        "--task anomaly on them"
    ]


WHOLE_IMAGE = 0.9  # a box covering this share of its image or more is an image-level label


def _boxes_are_whole_images(dataset: SampleSet, config: RunConfig) -> list[str]:
    """Boxes that each cover (nearly) their whole image are image labels exported as boxes:
    a detector learns nothing of where from them (image sizes from the file headers)."""
    if config.task != "detect":
        return []
    from PIL import Image

    boxed = [s for s in dataset.samples if s.boxes][:500]
    whole = total = 0
    for sample in boxed:
        with Image.open(sample.image) as image:
            area = image.width * image.height
        for box in sample.boxes:
            total += 1
            whole += (box.x2 - box.x1) * (box.y2 - box.y1) >= WHOLE_IMAGE * area
    if not total or whole < 0.9 * total:
        return []
    return [
        f"{whole} of the {total} boxes of {dataset.root} ({dataset.layout}) cover "
        f"{WHOLE_IMAGE:.0%} of their image or more: these are image-level labels, not "
        "places. Train --task classify on them (each image's label is its box's class), or "
        "draw boxes around the defects"
    ]


def check_settings(config: RunConfig, dataset: SampleSet) -> None:
    """Raise one ConfigError listing every setting that does not fit `dataset`."""
    problems: list[str] = []
    classes = list(dataset.classes)
    where = f"{dataset.root} ({dataset.layout})"
    positive = config.eval.positive
    if config.task == "classify" and positive and positive not in classes:
        problems.append(
            f"eval.positive={positive!r} is not a class of {where}; its classes: "
            f"{classes}. Name the NG class (--set eval.positive=CLASS) or leave it empty "
            '("ng" is used when there is one)'
        )
    if config.task == "anomaly":
        good = config.anomaly.good_label
        if good and good not in classes:
            problems.append(
                f"anomaly.good_label={good!r} is not a class of {where}; its classes: "
                f"{classes}. --set anomaly.good_label=CLASS names the defect-free one"
            )
        elif not good and ok_class(classes) is None:
            problems.append(
                f"no class of {where} is named as defect-free (good, ok, free, normal, "
                f"defect-free); its classes: {classes}. --set anomaly.good_label=CLASS names it"
            )
    meta_keys = sorted({k for s in dataset.samples for k in s.meta})
    available = [*SPLIT_KEYS, *meta_keys]
    for key in config.split.stratify_by:
        if key not in SPLIT_KEYS and not all(key in s.meta for s in dataset.samples):
            problems.append(
                f"split.stratify_by names {key!r}, which the samples of {where} do not have; "
                f"available: {available}. --set split.stratify_by=label"
            )
    problems += _thin_strata(dataset, config)
    if config.split.group_by:
        from defectkit.data.splits import assign_groups

        try:
            assign_groups(dataset.samples, Path(dataset.root), config.split.group_by)
        except DatasetError as error:
            problems.append(str(error))
    size = config.data.image_size
    if not MIN_SIZE <= size <= MAX_SIZE:
        problems.append(
            f"data.image_size={size} is outside {MIN_SIZE}..{MAX_SIZE} pixels: --set "
            "data.image_size=N within them (a dry run shows the size drawn from the images)"
        )
    if config.task == "segment":
        step = 2**config.segment.encoder_depth
        if size % step:
            problems.append(
                f"data.image_size={size} is not a multiple of {step}, which a U-Net with "
                f"segment.encoder_depth={config.segment.encoder_depth} needs: --set "
                f"data.image_size={max(step, size // step * step)}"
            )
    for folder in _empty_class_folders(dataset):
        problems.append(
            f"class folder {folder!r} of {where} holds no images: add its images or remove "
            "the folder (an empty class cannot be learnt or tested)"
        )
    problems += _too_small(dataset, config)
    problems += _no_mask_marks_a_defect(dataset, config)
    problems += _boxes_are_whole_images(dataset, config)
    if config.task in ("segment", "detect"):
        stages = getattr(config, config.task).frozen_stages
        if stages < 0:
            problems.append(
                f"{config.task}.frozen_stages={stages} is negative: 0 trains every stage "
                "of the backbone, n > 0 keeps its stem and first n stages as loaded"
            )
    if config.split.per_class < 0:
        problems.append(
            f"split.per_class={config.split.per_class} is negative: 0 keeps every training "
            "image, k > 0 at most k of each class"
        )
    hard = config.anomaly.hard_fraction
    if config.task == "anomaly" and not 0 < hard <= 1:
        problems.append(
            f"anomaly.hard_fraction={hard} is outside (0, 1]: the share of each batch's "
            "patches the autoencoder's loss averages (1 = all of them; 0.02 the default)"
        )
    if config.task == "classify" and config.train.loss not in LOSSES:
        problems.append(
            f"train.loss={config.train.loss!r} is not one of {list(LOSSES)} (ordinal: the "
            "classes in name order are grades, e.g. p000 < p033 < p067 < p100)"
        )
    if config.task == "classify" and config.train.views not in VIEWS:
        problems.append(
            f"train.views={config.train.views!r} is not one of {sorted(VIEWS)} (the views "
            "of each training image the fewshot strategy computes features of)"
        )
    problems += calibration_problems(config) + augmentation_problems(config)
    if config.eval.tta not in VIEWS:
        problems.append(
            f"eval.tta={config.eval.tta!r} is not one of {sorted(VIEWS)} (the views of each "
            "image the shipped classifier or detector also looks at)"
        )
    elif config.eval.tta != "none" and config.task not in ("classify", "detect"):
        problems.append(
            f"eval.tta={config.eval.tta} pools a classifier's or a detector's views of each "
            f"image: a {config.task} model has none (leave eval.tta=none)"
        )
    merge = config.detect.tta_merge
    if config.task == "detect" and merge not in ("nms", "wbf"):
        problems.append(
            f"detect.tta_merge={merge!r} is not one of ['nms', 'wbf'] (how the boxes of the "
            "eval.tta views become one)"
        )
    elif config.task == "detect" and merge == "wbf" and config.eval.tta == "none":
        problems.append(
            "detect.tta_merge=wbf fuses the boxes of several views of each image: give them "
            "with eval.tta (e.g. flips)"
        )
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{len(problems)} setting(s) do not fit the data:\n{lines}")
