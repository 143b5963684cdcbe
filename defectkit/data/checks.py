"""Every file of a dataset checked once before any work is spent on it.

Each image, mask and reference is opened, its header judged against the pixel limit and its
pixels fully decoded, in parallel with a progress bar; masks and references must have their
image's size. Results are cached by (path, size, mtime), so a second run over the same
folder is instant. All bad files are reported in one message, each with its reason and fix
(`data.on_bad_image=error`), or left out and listed (`skip`)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from defectkit.data.formats import read_dataset
from defectkit.data.images import MAX_PIXELS, open_image, without_path
from defectkit.data.samples import DatasetError, Sample, SampleSet

ON_BAD = ("error", "skip")
_CACHE_VERSION = 1


@dataclass(frozen=True)
class BadFile:
    """A sample that cannot be used: its image, the file at fault and why."""

    image: str
    file: str
    reason: str

    def line(self) -> str:
        return f"  {self.file}: {self.reason}" + (
            f" (the {Path(self.image).name} sample)" if self.file != self.image else ""
        )


def cache_path() -> Path:
    """`$DEFECTKIT_CACHE_DIR/image-checks.json`, else under ~/.cache/defectkit."""
    base = os.environ.get("DEFECTKIT_CACHE_DIR") or Path.home() / ".cache" / "defectkit"
    return Path(base) / "image-checks.json"


class CheckCache:
    """path -> (size, mtime_ns, pixel limit, (width, height) or None, reason or None)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.lock = threading.Lock()
        if path is not None and path.is_file():
            try:
                stored = json.loads(path.read_text())
                if stored.get("version") == _CACHE_VERSION:
                    self.entries = stored["files"]
            except (OSError, ValueError, KeyError, AttributeError):
                self.entries = {}  # a damaged cache only costs a re-check

    @staticmethod
    def _stamp(path: Path, max_pixels: int) -> list | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return [stat.st_size, stat.st_mtime_ns, max_pixels]

    def get(self, path: Path, max_pixels: int) -> tuple[tuple[int, int] | None, str | None] | None:
        stamp = self._stamp(path, max_pixels)
        entry = self.entries.get(str(path.resolve()))
        if stamp is None or entry is None or entry[:3] != stamp:
            return None
        return (tuple(entry[3]) if entry[3] else None), entry[4]

    def put(self, path: Path, max_pixels: int, size: tuple[int, int] | None, reason: str | None):
        stamp = self._stamp(path, max_pixels)
        if stamp is not None:
            with self.lock:
                self.entries[str(path.resolve())] = [*stamp, list(size) if size else None, reason]

    def save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps({"version": _CACHE_VERSION, "files": self.entries}))
            os.replace(temporary, self.path)
        except OSError:
            pass  # a read-only home only costs the next run a re-check


def check_file(
    path: Path, max_pixels: int = MAX_PIXELS
) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height), None) for a readable image, (None or size, reason) for a bad one."""
    try:
        with open_image(path, max_pixels) as image:
            return image.size, None
    except DatasetError as error:
        return None, without_path(str(error), path)


def check_samples(
    samples: Iterable[Sample],
    max_pixels: int = MAX_PIXELS,
    workers: int | None = None,
    cache: CheckCache | None = None,
) -> list[BadFile]:
    """Every image, mask and reference of the samples decoded once; the bad ones, in order."""
    samples = list(samples)
    files = sorted(
        {str(p) for s in samples for p in (s.image, s.mask, s.reference) if p is not None}
    )
    results: dict[str, tuple[tuple[int, int] | None, str | None]] = {}
    todo = []
    for name in files:
        known = cache.get(Path(name), max_pixels) if cache is not None else None
        if known is None:
            todo.append(name)
        else:
            results[name] = known

    def one(name: str) -> None:
        results[name] = check_file(Path(name), max_pixels)
        if cache is not None:
            cache.put(Path(name), max_pixels, *results[name])

    if todo:
        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
            for _ in tqdm(
                pool.map(one, todo),
                total=len(todo),
                desc="checking images",
                unit="file",
                leave=False,
                disable=None,
            ):
                pass
        if cache is not None:
            cache.save()
    bad = []
    for sample in samples:
        image = str(sample.image)
        size, reason = results[image]
        if reason:
            bad.append(BadFile(image, image, reason))
            continue
        for kind, other in (("mask", sample.mask), ("reference", sample.reference)):
            if other is None:
                continue
            other_size, other_reason = results[str(other)]
            if other_reason:
                bad.append(BadFile(image, str(other), f"{kind}: {other_reason}"))
            elif other_size != size:
                bad.append(
                    BadFile(
                        image,
                        str(other),
                        f"the {kind} is {other_size[0]}x{other_size[1]} pixels, its image "
                        f"{sample.image.name} {size[0]}x{size[1]}: give the {kind} the "
                        "image's size",
                    )
                )
    return bad


def check_dataset(
    dataset: SampleSet,
    on_bad: str = "error",
    max_pixels: int = MAX_PIXELS,
    use_cache: bool = True,
) -> SampleSet:
    """The dataset with every file checked: all bad files in one DatasetError (`error`), or
    their samples left out and listed in `SampleSet.left_out` (`skip`)."""
    if on_bad not in ON_BAD:
        raise DatasetError(f"data.on_bad_image={on_bad!r}: use one of {', '.join(ON_BAD)}")
    cache = CheckCache(cache_path() if use_cache else None)
    bad = check_samples(dataset.samples, max_pixels, cache=cache)
    if not bad:
        return dataset
    if on_bad == "error":
        raise DatasetError(
            f"{len(bad)} of {len(dataset)} samples in {dataset.root} cannot be used:\n"
            + "\n".join(b.line() for b in bad)
            + "\nReplace or remove these files, or leave them out of this run with "
            "--set data.on_bad_image=skip (the run lists what it left out)."
        )
    excluded = {b.image for b in bad}
    kept = tuple(s for s in dataset.samples if str(s.image) not in excluded)
    if not kept:
        raise DatasetError(f"every sample of {dataset.root} is unreadable; nothing left to use")
    return replace(dataset, samples=kept, left_out=dataset.left_out + tuple(bad))


def read_checked(
    root: str | Path,
    format: str = "auto",
    label_mode: str = "default",
    on_bad: str = "error",
    labels: str | Path | None = None,
) -> SampleSet:
    """A dataset folder read in its layout and every file of it checked (see check_dataset)."""
    return check_dataset(read_dataset(root, format, label_mode, labels), on_bad)
