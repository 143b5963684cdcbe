"""`defectkit data inspect`: what is in a dataset folder before anyone trains on it."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from defectkit.data.images import load_image, open_image
from defectkit.data.samples import DatasetError, Sample, SampleSet, ok_class

THUMB = 64  # side of the thumbnails compared: fine enough that textures decorrelate
LOOK_ALIKE = 0.99  # correlation of two thumbnails above which images count as the same
MAX_COMPARED = 20_000  # beyond this many images the all-pairs comparison is skipped


def thumbnail(image: Image.Image) -> np.ndarray:
    """A 64 x 64 greyscale thumbnail, zero mean and unit variance: brightness and contrast
    (another exposure of the same part) do not change it, other content does."""
    small = np.asarray(image.convert("L").resize((THUMB, THUMB), Image.BILINEAR), np.float32)
    small = small.ravel() - small.mean()
    return small / (small.std() + 1e-6)


def look_alike_groups(
    thumbs: np.ndarray, aspects: np.ndarray, threshold: float = LOOK_ALIKE
) -> list[list[int]]:
    """Groups of images (indices) whose thumbnails correlate above `threshold` with another
    member: the same part shot again (magnetic tile keeps each tile at up to six exposures),
    re-saved or rescaled copies. Only images of about the same aspect ratio are compared.

    Calibrated on the real sets: re-saved (JPEG q70) and 90%-rescaled copies correlate at
    >= 0.996; at 0.99 magnetic tile gives 143 groups of 458 images (each the same tile at
    several exposures, checked by eye) and NEU steel 1 pair, where 8 x 8 difference hashes
    within 4 bits paired 7458 and 12,000 unrelated images."""
    n = len(thumbs)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    log_aspect = np.log(np.asarray(aspects, dtype=np.float64))
    for start in range(0, n, 1024):
        block = thumbs[start : start + 1024] @ thumbs.T / thumbs.shape[1]
        close = np.abs(log_aspect[start : start + 1024, None] - log_aspect[None]) < 0.05
        rows, cols = np.nonzero((block > threshold) & close)
        for i, j in zip(rows + start, cols, strict=True):
            if i < j:
                parent[root(i)] = root(j)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[root(i)].append(i)
    return [g for g in members.values() if len(g) > 1]


def summarize(dataset: SampleSet) -> dict[str, Any]:
    """Counts, sizes, modes, imbalance, unreadable files, exact duplicates and look-alike
    groups. `dataset.left_out` lists the samples with a bad file (data.checks): counted,
    not read."""
    sizes, modes = Counter(), Counter()
    broken = [{"image": b.image, "file": b.file, "error": b.reason} for b in dataset.left_out]
    skip = {b.image for b in dataset.left_out}
    by_md5: dict[str, list[str]] = defaultdict(list)
    thumbs, aspects, paths = [], [], []
    compare = len(dataset) <= MAX_COMPARED
    for sample in tqdm(dataset.samples, desc="reading images", leave=False, disable=None):
        path = sample.image
        if str(path) in skip:
            continue
        try:
            image = open_image(path)
        except DatasetError as error:  # not checked first: report it here
            broken.append({"image": str(path), "file": str(path), "error": str(error)})
            continue
        with image:
            sizes[f"{image.width}x{image.height}"] += 1
            modes[image.mode] += 1
            if compare:
                thumbs.append(thumbnail(image))
                aspects.append(image.width / image.height)
                paths.append(str(path))
        by_md5[hashlib.md5(path.read_bytes()).hexdigest()].append(str(path))
    exact = [group for group in by_md5.values() if len(group) > 1]
    identical = {p for group in exact for p in group[1:]}  # copies count once
    keep = [i for i, p in enumerate(paths) if p not in identical]
    groups = (
        [
            [paths[keep[i]] for i in group]
            for group in look_alike_groups(
                np.stack([thumbs[i] for i in keep]), np.array([aspects[i] for i in keep])
            )
        ]
        if len(keep) > 1
        else []
    )
    counts = dataset.counts()
    present = [n for n in counts.values() if n]
    splits = Counter(str(s.meta.get("split", "-")) for s in dataset.samples)
    return {
        "root": str(dataset.root),
        "layout": dataset.layout,
        "labels": dataset.labels or "beside the images",
        "unlabelled": dataset.unlabelled,
        "images": len(dataset),
        "classes": counts,
        "official_splits": dict(splits) if len(splits) > 1 else {},
        "imbalance_ratio": max(present) / min(present) if present else 0.0,
        "sizes": dict(sizes.most_common()),
        "modes": dict(modes),
        "with_masks": sum(s.mask is not None for s in dataset.samples),
        "with_boxes": sum(bool(s.boxes) for s in dataset.samples),
        "boxes": box_summary(dataset),
        "with_reference": sum(s.reference is not None for s in dataset.samples),
        "broken": broken,
        "exact_duplicates": exact,
        "look_alike_groups": sorted(groups, key=len, reverse=True),
        "look_alike_compared": compare,
        "tasks": servable_tasks(dataset),
    }


def box_summary(dataset: SampleSet) -> dict[str, Any]:
    """Box counts per class, polygons among them, COCO's size buckets (area under 32x32,
    up to 96x96, above) and width / height percentiles in the image's pixels."""
    boxes = [b for s in dataset.samples for b in s.boxes]
    if not boxes:
        return {}
    widths = np.array([b.x2 - b.x1 for b in boxes])
    heights = np.array([b.y2 - b.y1 for b in boxes])
    area = widths * heights
    return {
        "count": len(boxes),
        "per_class": dict(Counter(b.label for b in boxes).most_common()),
        "polygons": sum(bool(b.polygon) for b in boxes),
        "small": int((area < 32**2).sum()),
        "medium": int(((area >= 32**2) & (area < 96**2)).sum()),
        "large": int((area >= 96**2).sum()),
        "width_p5_p50_p95": [float(v) for v in np.percentile(widths, [5, 50, 95])],
        "height_p5_p50_p95": [float(v) for v in np.percentile(heights, [5, 50, 95])],
        "most_per_image": max(len(s.boxes) for s in dataset.samples),
    }


def near_duplicate_groups(samples: Sequence[Sample]) -> list[Sample]:
    """The samples with `group` set so that look-alike images (see look_alike_groups) share
    one; samples that already carry a group keep it."""
    thumbs, aspects = [], []
    for sample in samples:
        image = load_image(sample.image)
        thumbs.append(thumbnail(image))
        aspects.append(image.width / image.height)
    group_of = {i: str(samples[i].image) for i in range(len(samples))}
    for members in look_alike_groups(np.stack(thumbs), np.array(aspects)):
        for i in members:
            group_of[i] = str(samples[members[0]].image)
    return [s if s.group else replace(s, group=group_of[i]) for i, s in enumerate(samples)]


def servable_tasks(dataset: SampleSet) -> dict[str, str]:
    """The tasks this data can train, each with what makes it so."""
    counts = dataset.counts()
    masks = sum(s.mask is not None for s in dataset.samples)
    boxed = sum(bool(s.boxes) for s in dataset.samples)
    good = ok_class(list(counts))
    tasks = {}
    if len(counts) >= 2:
        tasks["classify"] = f"{len(counts)} classes"
    if good is not None and counts.get(good):
        tasks["anomaly"] = f"{counts[good]} images of the defect-free class {good!r}"
    if masks or boxed:
        tasks["segment"] = f"{masks} masks" if masks else f"{boxed} images with boxes (filled)"
    if boxed:
        tasks["detect"] = f"{boxed} images with boxes"
    return tasks


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{summary['root']}  ({summary['layout']} layout, {summary['images']} images)"]
    if summary.get("labels", "beside the images") != "beside the images":
        lines.append(
            f"labels from {summary['labels']}: {summary['unlabelled']} image(s) have no label "
            "file there (read as defect-free)"
        )
    lines.append("")
    width = max(len(c) for c in summary["classes"]) if summary["classes"] else 5
    lines += [f"  {name:<{width}}  {count:6d}" for name, count in summary["classes"].items()]
    if summary["official_splits"]:
        lines.append(
            "  official split: "
            + ", ".join(f"{k} {v}" for k, v in summary["official_splits"].items())
        )
    sizes = list(summary["sizes"].items())
    lines += [
        "",
        f"imbalance ratio (largest / smallest class): {summary['imbalance_ratio']:.2f}",
        f"image sizes: {', '.join(f'{s} ({n})' for s, n in sizes[:5])}"
        + (f" and {len(sizes) - 5} more" if len(sizes) > 5 else ""),
        f"modes: {', '.join(f'{m} ({n})' for m, n in summary['modes'].items())}",
        f"masks: {summary['with_masks']}, boxes: {summary['with_boxes']}, "
        f"reference images: {summary['with_reference']}",
        f"unreadable files: {len(summary['broken'])}",
        "tasks this data can train: "
        + ("; ".join(f"{t} ({why})" for t, why in summary.get("tasks", {}).items()) or "none"),
    ]
    boxes = summary.get("boxes")
    if boxes:
        w, h = boxes["width_p5_p50_p95"], boxes["height_p5_p50_p95"]
        lines += [
            f"boxes: {boxes['count']} ({boxes['polygons']} polygons), up to "
            f"{boxes['most_per_image']} per image: "
            + ", ".join(f"{k} {v}" for k, v in boxes["per_class"].items()),
            f"  box sizes (COCO): small {boxes['small']}, medium {boxes['medium']}, large "
            f"{boxes['large']}; width p5/p50/p95 {w[0]:.0f}/{w[1]:.0f}/{w[2]:.0f} px, height "
            f"{h[0]:.0f}/{h[1]:.0f}/{h[2]:.0f} px",
        ]
    lines += [f"  {b.get('file', b['image'])}: {b['error']}" for b in summary["broken"]]
    groups = summary["look_alike_groups"]
    lines.append(f"exact duplicates: {len(summary['exact_duplicates'])} group(s)")
    if not summary["look_alike_compared"]:
        lines.append("look-alike images: not compared (over 20,000 images)")
    elif groups:
        largest = sorted(groups, key=len, reverse=True)[:3]
        lines.append(
            f"look-alike images (64 px thumbnails correlating above {LOOK_ALIKE}): "
            f"{len(groups)} group(s) holding {sum(map(len, groups))} images (the same part "
            "shot again, or re-saved / rescaled copies); the largest: "
            + "; ".join(
                f"{len(g)} images ({' ~ '.join(Path(p).name for p in g[:3])}"
                f"{' ~ ...' if len(g) > 3 else ''})"
                for g in largest
            )
            + ". split.method=grouped keeps each group on one side of the split; "
            "split.group_by names the groups when you know them"
        )
    else:
        lines.append("look-alike images: none")
    return "\n".join(lines)


def sample_grid_items(
    dataset: SampleSet, summary: dict[str, Any], per_class: int = 6
) -> list[tuple[Path, str]]:
    """The first readable images of each class, for a picture grid."""
    broken = {b["image"] for b in summary["broken"]}
    items = []
    for name in dataset.classes:
        members = [s for s in dataset.samples if s.label == name and str(s.image) not in broken][
            :per_class
        ]
        items += [(s.image, name) for s in members]
    return items
