"""Seeded train / val / test splits: stratified, grouped, k-fold, official, or a saved manifest.

"Shuffle with seed s" means what PROTOCOLS.md says: sort by path, then
`random.Random(s).shuffle`, so that a split made today is the split made next month.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from defectkit.config import SplitConfig
from defectkit.data.samples import DatasetError, Sample, SampleSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    test: tuple[Sample, ...]

    def parts(self) -> dict[str, tuple[Sample, ...]]:
        return {"train": self.train, "val": self.val, "test": self.test}


def _shuffled(samples: Sequence[Sample], seed: int) -> list[Sample]:
    ordered = sorted(samples, key=lambda s: str(s.image))
    random.Random(seed).shuffle(ordered)
    return ordered


def _strata(samples: Sequence[Sample], keys: Sequence[str]) -> dict[tuple[str, ...], list[Sample]]:
    strata: dict[tuple[str, ...], list[Sample]] = defaultdict(list)
    for sample in samples:
        strata[tuple(sample.key(k) for k in keys)].append(sample)
    return dict(sorted(strata.items()))


def stratified_split(
    samples: Sequence[Sample], first_fraction: float, seed: int, keys: Sequence[str] = ("label",)
) -> tuple[list[Sample], list[Sample]]:
    """Per stratum: shuffle with `seed`, the first int(first_fraction * n) go to the first part."""
    first, rest = [], []
    for members in _strata(samples, keys).values():
        ordered = _shuffled(members, seed)
        cut = int(first_fraction * len(ordered))
        first += ordered[:cut]
        rest += ordered[cut:]
    return first, rest


def grouped_split(
    samples: Sequence[Sample], first_fraction: float, seed: int, parts: str = "train / test"
) -> tuple[list[Sample], list[Sample]]:
    """Whole groups go to one side, so near-duplicates never straddle train and test. The
    shuffled groups are dealt in turn: each to the first part where that brings it nearer
    `first_fraction` of the images, else to the rest. Neither side is left empty while there
    are two groups (a few large groups could otherwise all land on one side); one group
    cannot be cut, and a cut far from the asked fraction is logged. `parts` names the two
    sides in those messages."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.group or str(sample.image)].append(sample)
    names = sorted(groups)
    if not names:
        return [], []
    random.Random(seed).shuffle(names)
    target = first_fraction * len(samples)
    first: list[str] = []
    rest: list[str] = []
    size = 0
    for name in names:
        if abs(size + len(groups[name]) - target) <= abs(size - target):
            first.append(name)
            size += len(groups[name])
        else:
            rest.append(name)
    if 0 < first_fraction < 1 and not (first and rest):
        if len(names) < 2:
            raise DatasetError(
                f"all {len(samples)} images are one group ({names[0]!r} with split.group_by "
                f"or as near-duplicates): whole groups go to one side, so the {parts} cut "
                "would leave one side empty; group by something finer, or make the cut with "
                "split.method=manifest"
            )
        full, empty = (first, rest) if first else (rest, first)
        smallest = min(full, key=lambda n: len(groups[n]))
        full.remove(smallest)
        empty.append(smallest)
    first_samples = [s for name in first for s in groups[name]]
    rest_samples = [s for name in rest for s in groups[name]]
    share = len(rest_samples) / max(1, len(samples))
    if abs(share - (1 - first_fraction)) > 0.5 * (1 - first_fraction):
        log.warning(
            "the %s cut by whole groups puts %d of %d images (%.0f%%, asked %.0f%%) on its "
            "second side: %d groups of %d..%d images",
            parts,
            len(rest_samples),
            len(samples),
            100 * share,
            100 * (1 - first_fraction),
            len(names),
            min(len(g) for g in groups.values()),
            max(len(g) for g in groups.values()),
        )
    return first_samples, rest_samples


def kfold_split(
    samples: Sequence[Sample], folds: int, fold: int, seed: int, keys: Sequence[str] = ("label",)
) -> tuple[list[Sample], list[Sample]]:
    """Stratified k-fold: in each stratum the i-th shuffled sample lands in fold i % folds."""
    if not 0 <= fold < folds:
        raise DatasetError(f"split.fold={fold} is outside 0..{folds - 1}")
    train, test = [], []
    for members in _strata(samples, keys).values():
        for i, sample in enumerate(_shuffled(members, seed)):
            (test if i % folds == fold else train).append(sample)
    return train, test


def _official(samples: Sequence[Sample]) -> tuple[list[Sample], list[Sample]]:
    train = [s for s in samples if s.meta.get("split") == "train"]
    test = [s for s in samples if s.meta.get("split") == "test"]
    if not train or not test:
        raise DatasetError(
            "split.method=official needs a layout with its own split lists "
            "(MVTec AD, DeepPCB); use stratified for this dataset"
        )
    return train, test


def _group_of_csv(spec: str, samples: Sequence[Sample], root: Path) -> dict[Path, str]:
    import csv

    try:
        _, file, column = spec.split(":", 2)
    except ValueError:
        raise DatasetError(f"split.group_by={spec!r}: write csv:<file>:<column>") from None
    path = Path(file) if Path(file).is_absolute() else root / file
    if not path.is_file() and Path(file).is_file():
        path = Path(file)
    if not path.is_file():
        raise DatasetError(f"split.group_by: {file} does not exist (relative to {root} or here)")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    header = list(rows[0]) if rows else []
    name_column = next(
        (c for c in header if c.lower() in ("image", "file", "path", "filename")), None
    )
    if column not in header or name_column is None:
        raise DatasetError(
            f"{path} needs a column naming the image (image, file, path or filename) and the "
            f"column {column!r}; its columns: {header}"
        )
    by_name = {row[name_column].strip(): row[column].strip() for row in rows}
    groups = {}
    for sample in samples:
        relative = _relative(sample, root)
        group = by_name.get(relative, by_name.get(sample.image.name))
        if group is not None:
            groups[sample.image] = group
    return groups


def assign_groups(samples: Sequence[Sample], root: Path, group_by: str) -> tuple[Sample, ...]:
    """Each sample's group from split.group_by (see SplitConfig); every image must get one."""
    import re
    from dataclasses import replace

    if group_by == "folder":
        groups = {s.image: _relative(Sample(s.image.parent), root) for s in samples}
    elif group_by.startswith("regex:"):
        try:
            pattern = re.compile(group_by.removeprefix("regex:"))
        except re.error as error:
            raise DatasetError(
                f"split.group_by={group_by!r}: not a regular expression ({error})"
            ) from None
        groups = {}
        for s in samples:
            found = pattern.search(s.image.name)
            if found:
                groups[s.image] = found.group(1) if pattern.groups else found.group(0)
    elif group_by.startswith("csv:"):
        groups = _group_of_csv(group_by, samples, root)
    else:
        raise DatasetError(
            f"unknown split.group_by {group_by!r}; use folder, regex:<pattern> or "
            "csv:<file>:<column>"
        )
    missing = [s.image for s in samples if s.image not in groups]
    if missing:
        shown = ", ".join(str(p.name) for p in missing[:8])
        raise DatasetError(
            f"split.group_by={group_by!r} gives no group to {len(missing)} of {len(samples)} "
            f"image(s), e.g. {shown}: fix the pattern / CSV so every image has its group"
        )
    return tuple(replace(s, group=groups[s.image]) for s in samples)


def grouped_kfold_split(
    samples: Sequence[Sample], folds: int, fold: int, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """k-fold over whole groups: the i-th shuffled group lands in fold i % folds."""
    if not 0 <= fold < folds:
        raise DatasetError(f"split.fold={fold} is outside 0..{folds - 1}")
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.group or str(sample.image)].append(sample)
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    train, test = [], []
    for i, name in enumerate(names):
        (test if i % folds == fold else train).extend(groups[name])
    return train, test


def make_split(dataset: SampleSet, config: SplitConfig) -> Split:
    """The split a config asks for; validation is always carved out of train only. With
    split.group_by, whole groups go to one side of every cut (stratification gives way)."""
    samples = dataset.samples
    if config.method == "manifest":
        return load_manifest(dataset, Path(config.manifest))
    grouped = bool(config.group_by) or config.method == "grouped"
    if config.group_by:
        samples = assign_groups(samples, Path(dataset.root), config.group_by)
        if config.method == "kfold":
            train, test = grouped_kfold_split(samples, config.folds, config.fold, config.seed)
        elif config.method == "official":
            train, test = _official(samples)
        else:
            train, test = grouped_split(samples, 1 - config.test_fraction, config.seed)
    elif config.method == "stratified":
        train, test = stratified_split(
            samples, 1 - config.test_fraction, config.seed, config.stratify_by
        )
    elif config.method == "grouped":
        if not any(s.group for s in samples):  # no groups from the layout: group look-alikes
            from defectkit.data.summary import near_duplicate_groups

            samples = tuple(near_duplicate_groups(samples))
        train, test = grouped_split(samples, 1 - config.test_fraction, config.seed)
    elif config.method == "kfold":
        train, test = kfold_split(
            samples, config.folds, config.fold, config.seed, config.stratify_by
        )
    elif config.method == "official":
        train, test = _official(samples)
    else:
        raise DatasetError(
            f"unknown split.method {config.method!r}; use stratified, grouped, "
            "kfold, official or manifest"
        )
    val: list[Sample] = []
    if config.val_fraction > 0:
        if grouped:
            train, val = grouped_split(train, 1 - config.val_fraction, config.seed, "train / val")
        else:
            train, val = stratified_split(
                train, 1 - config.val_fraction, config.seed, config.stratify_by
            )
    if config.per_class:
        train = per_class_subset(train, config.per_class, config.per_class_seed)
    return Split(tuple(train), tuple(val), tuple(test))


def per_class_subset(samples: Sequence[Sample], k: int, seed: int) -> list[Sample]:
    """At most k samples of each label: the name-sorted list shuffled with `seed`, the first
    k, so the subsets of one seed are nested (k=5 is part of k=10: a learning curve adds
    images instead of drawing new ones)."""
    kept: list[Sample] = []
    for members in _strata(samples, ("label",)).values():
        kept += _shuffled(members, seed)[:k]
    return kept


def _relative(sample: Sample, root: Path) -> str:
    try:
        return str(sample.image.relative_to(root))
    except ValueError:
        return str(sample.image)


def save_manifest(
    split: Split, dataset: SampleSet, path: Path, config: SplitConfig, method: str = ""
) -> None:
    """split.json: image paths relative to the dataset root, per part, with how they were
    made (`method`: a task's own rule, else split.method)."""
    payload = {
        "root": str(dataset.root),
        "layout": dataset.layout,
        "labels": dataset.labels,  # the label folder where it is not the images' own
        "method": method or config.method,
        "seed": config.seed,
        "left_out": [vars(b) for b in dataset.left_out],
        **{
            # in the split's own order: a resumed run then draws its batches as the
            # uninterrupted run did (sorted lists reordered the training set)
            part: [_relative(s, dataset.root) for s in members]
            for part, members in split.parts().items()
        },
    }
    path.write_text(json.dumps(payload, indent=1))


def load_manifest(dataset: SampleSet, path: Path) -> Split:
    """Reuse a saved split (a split.json, or the run folder holding one) on the same dataset."""
    if path.is_dir():
        path = path / "split.json"
    if not path.is_file():
        raise DatasetError(
            f"split manifest {path} does not exist; give a run folder or the split.json a run wrote"
        )
    payload = json.loads(path.read_text())
    by_path = {_relative(s, dataset.root): s for s in dataset.samples}
    # samples left out for an unreadable file (data.on_bad_image=skip) stay out
    skipped = {_relative(Sample(Path(b.image)), dataset.root) for b in dataset.left_out}
    parts = {}
    for part in ("train", "val", "test"):
        listed = [p for p in payload.get(part, []) if p not in skipped]
        missing = [p for p in listed if p not in by_path]
        if missing:
            raise DatasetError(
                f"{path} names {len(missing)} image(s) not in {dataset.root}, "
                f"e.g. {missing[0]}: is this the dataset the split was made on?"
            )
        parts[part] = tuple(by_path[p] for p in listed)
    return Split(**parts)
