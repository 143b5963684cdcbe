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

from defectkit.data.formats import DatasetError
from defectkit.data.images import load_image, open_image
from defectkit.data.samples import Sample, SampleSet


def difference_hash(image: Image.Image, side: int = 8) -> int:
    """64-bit dHash: which neighbouring pixels of a 9x8 thumbnail get brighter. Near-duplicate
    images (re-saved, slightly rescaled) share most bits."""
    small = np.asarray(image.convert("L").resize((side + 1, side), Image.BILINEAR), dtype=float)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def summarize(dataset: SampleSet, near_bits: int = 4) -> dict[str, Any]:
    """Counts, sizes, modes, imbalance, unreadable files, exact and near duplicates.
    `dataset.left_out` lists the samples with a bad file (data.checks): counted, not read."""
    sizes, modes = Counter(), Counter()
    broken = [{"image": b.image, "file": b.file, "error": b.reason} for b in dataset.left_out]
    skip = {b.image for b in dataset.left_out}
    by_md5: dict[str, list[str]] = defaultdict(list)
    hashes: list[tuple[int, str]] = []
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
            image = image.convert("RGB")
        by_md5[hashlib.md5(path.read_bytes()).hexdigest()].append(str(path))
        hashes.append((difference_hash(image), str(path)))
    exact = [paths for paths in by_md5.values() if len(paths) > 1]
    near = _near_duplicates(hashes, near_bits)
    counts = dataset.counts()
    present = [n for n in counts.values() if n]
    splits = Counter(str(s.meta.get("split", "-")) for s in dataset.samples)
    return {
        "root": str(dataset.root),
        "layout": dataset.layout,
        "images": len(dataset),
        "classes": counts,
        "official_splits": dict(splits) if len(splits) > 1 else {},
        "imbalance_ratio": max(present) / min(present) if present else 0.0,
        "sizes": dict(sizes.most_common()),
        "modes": dict(modes),
        "with_masks": sum(s.mask is not None for s in dataset.samples),
        "with_boxes": sum(bool(s.boxes) for s in dataset.samples),
        "with_reference": sum(s.reference is not None for s in dataset.samples),
        "broken": broken,
        "exact_duplicates": exact,
        "near_duplicates": near,
    }


def _near_duplicates(hashes: list[tuple[int, str]], max_bits: int) -> list[list[str]]:
    """Pairs whose dHashes differ in at most `max_bits` bits (exact copies excluded)."""
    if len(hashes) < 2:
        return []
    values = np.array([h for h, _ in hashes], dtype=np.uint64)
    pairs = []
    for i in range(len(values) - 1):
        diff = np.bitwise_xor(values[i + 1 :], values[i])
        distance = np.unpackbits(diff.view(np.uint8).reshape(-1, 8), axis=1).sum(1)
        for j in np.nonzero(distance <= max_bits)[0]:
            pairs.append([hashes[i][1], hashes[i + 1 + j][1]])
    return pairs


def near_duplicate_groups(samples: Sequence[Sample], max_bits: int = 4) -> list[Sample]:
    """The samples with `group` set so that near-duplicate images share one (union-find over
    dHash pairs); samples that already carry a group keep it."""
    hashes = [(difference_hash(load_image(s.image)), str(s.image)) for s in samples]
    parent = {path: path for _, path in hashes}

    def root(path: str) -> str:
        while parent[path] != path:
            parent[path] = parent[parent[path]]
            path = parent[path]
        return path

    for a, b in _near_duplicates(hashes, max_bits):
        parent[root(a)] = root(b)
    return [s if s.group else replace(s, group=root(str(s.image))) for s in samples]


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{summary['root']}  ({summary['layout']} layout, {summary['images']} images)", ""]
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
    ]
    lines += [f"  {b.get('file', b['image'])}: {b['error']}" for b in summary["broken"]]
    lines.append(
        f"exact duplicates: {len(summary['exact_duplicates'])} group(s); near "
        f"duplicates: {len(summary['near_duplicates'])} pair(s)"
        + (" -> consider split.method=grouped" if summary["near_duplicates"] else "")
    )
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
