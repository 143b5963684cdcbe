"""Inspector: a model bundle -> predictions for new images, the same from a script, the
command line or a service, with either backend (PyTorch eager or ONNX Runtime) and one
result type for every task. Images are prepared with numpy and PIL (data/prepare.py) for
both backends; the ONNX backend imports torch only where the bundle's task needs it to
decide (a detector needs none: its graph ends in the kept boxes)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from defectkit.bundle import onnx_path, read_meta
from defectkit.data.images import is_image, load_image
from defectkit.data.prepare import RESIZE_MODES, prepare_image
from defectkit.data.samples import DatasetError
from defectkit.predictions import Prediction, Region
from defectkit.tasks import get_task

BACKENDS = ("torch", "onnx")


class _OnnxRunner:
    def __init__(self, meta: dict[str, Any], threads: int | None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(onnx_path(meta)), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, batch: Any) -> list[np.ndarray]:
        """batch: a float32 array (or a CPU tensor) of normalised inputs (B, C, S, S)."""
        return self.session.run(None, {"images": np.ascontiguousarray(batch, np.float32)})


class _TorchRunner:
    def __init__(self, meta: dict[str, Any], device: str, threads: int | None):
        import torch

        from defectkit.runtime.graph import InspectionGraph, load_model

        if threads:
            torch.set_num_threads(threads)
        model, _ = load_model(Path(meta["folder"]), meta)
        self.device = torch.device(device)
        self.graph = InspectionGraph.from_meta(model, meta).eval().to(self.device)

    def __call__(self, batch: Any) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            out = self.graph(torch.as_tensor(batch).to(self.device))
        outputs = out if isinstance(out, tuple) else (out,)
        return [(t.float() if t.is_floating_point() else t).cpu().numpy() for t in outputs]


class Inspector:
    """Runs a bundle (a bundle folder or a run folder holding bundle/) on images."""

    def __init__(
        self,
        bundle: str | Path,
        backend: str = "torch",
        device: str = "cpu",
        threads: int | None = None,
        raw_maps: bool = False,
    ):
        """raw_maps: anomaly heat maps in the method's own units instead of normalised (for
        pixel metrics, which clipping to [0, 1] would tie)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
        self.meta = read_meta(Path(bundle))
        self.task, self.backend = self.meta["task"], backend
        self.handler = get_task(self.task)  # an unknown task fails here, naming the known
        self.classes: list[str] = self.meta["classes"]
        self.size = self.meta["input_size"][0]
        prep = self.meta["preprocessing"]
        self.resize = prep.get("resize") if prep.get("resize") in RESIZE_MODES else "squash"
        self.preparation = {
            "size": self.size,
            "mean": prep["mean"],
            "std": prep["std"],
            "interpolation": prep["interpolation"],
            "resize": self.resize,
        }
        self.raw_maps = raw_maps
        self.positive = self.meta.get("positive_class")
        self.threshold = self.meta.get("threshold")
        self._run = (
            _OnnxRunner(self.meta, threads)
            if backend == "onnx"
            else _TorchRunner(self.meta, device, threads)
        )

    def _input(self, image: Image.Image, reference: Image.Image | None) -> np.ndarray:
        """The network's input for one image (C, S, S), its reference's channels after it."""
        x = prepare_image(image, **self.preparation)
        if reference is None:
            return x
        if reference.size != image.size:
            raise DatasetError(
                f"the reference is {reference.size[0]}x{reference.size[1]} pixels, the image "
                f"{image.size[0]}x{image.size[1]}: give the aligned reference of the same part"
            )
        return np.concatenate([x, prepare_image(reference, **self.preparation)])

    def predict_images(
        self,
        images: Sequence[Image.Image],
        names: Sequence[str],
        references: Sequence[Image.Image] | None = None,
    ) -> list[Prediction]:
        """`references`: the aligned defect-free image of each, for models that use one."""
        if not self.meta.get("reference") and any(r is not None for r in references or []):
            raise ValueError(
                "this model inspects each image alone (trained without a reference): give "
                "no references"
            )
        if self.meta.get("reference") and references is None:
            raise ValueError(
                "this model compares each image with its aligned defect-free reference "
                "(e.g. a DeepPCB template): give references"
            )
        pairs = zip(images, references or [None] * len(images), strict=True)
        if self.resize == "tile":
            return [
                self._tiled(name, image, ref)
                for name, (image, ref) in zip(names, pairs, strict=True)
            ]
        batch = np.stack([self._input(image, ref) for image, ref in pairs])
        return self.handler.decide(self, names, self._run(batch), images)

    def _tiled(self, name: str, image: Image.Image, reference: Image.Image | None) -> Prediction:
        """A model trained on windows: its task slides them over the whole image."""
        if self.handler.tiled is None:
            raise ValueError(f"{self.task} models do not take data.resize=tile")
        return self.handler.tiled(self, name, self._input(image, reference), image)

    def run_graph(self, batch: Any) -> list[np.ndarray]:
        """The inference graph's outputs for a batch of normalised inputs (B, C, S, S), an
        array or a tensor (either backend)."""
        return self._run(batch)

    def predict(
        self,
        paths: Iterable[str | Path],
        batch_size: int = 16,
        errors: list[dict[str, str]] | None = None,
        references: Iterable[str | Path] | None = None,
    ) -> Iterator[Prediction]:
        """Stream predictions in batches; unreadable files go to `errors` (or raise).
        `references`: the aligned reference of each path, for models that use one."""
        batch: list[Image.Image] = []
        refs: list[Image.Image] = []
        names: list[str] = []
        reference_paths = iter(references) if references is not None else None
        for path in paths:
            reference = next(reference_paths) if reference_paths is not None else None
            try:
                image = load_image(Path(path))
                if reference is not None:
                    refs.append(load_image(Path(reference)))
                batch.append(image)
                names.append(str(path))
            except DatasetError as error:
                if errors is None:
                    raise
                errors.append({"image": str(path), "error": str(error)})
            if len(batch) == batch_size:
                yield from self.predict_images(batch, names, refs if refs else None)
                batch, refs, names = [], [], []
        if batch:
            yield from self.predict_images(batch, names, refs if refs else None)

    def score_names(self) -> list[str]:
        """The keys of every Prediction.scores this model gives (columns of predict's CSV)."""
        return self.handler.score_names(self.meta)

    def describe(self) -> dict[str, Any]:
        """What an operator or a client needs to know of the model (no local paths)."""
        keep = (
            "task",
            "method",
            "arch",
            "backbone",
            "classes",
            "positive_class",
            "input_size",
            "reference",
        )
        return {
            **{k: self.meta[k] for k in keep if k in self.meta},
            "threshold": self.handler.shown_threshold(self.meta),
            # operators answer with a class (a classifier) or with OK / NG
            "decides_by_class": self.handler.decides_by_class,
            "backend": self.backend,
            "versions": self.meta.get("versions", {}),
            "weights_sha256": self.meta.get("weights_sha256"),
            "cpu_threads": self._threads(),
        }

    def _threads(self) -> int | None:
        if self.backend != "torch":
            return os.cpu_count()
        import torch

        return torch.get_num_threads()


def expand_inputs(inputs: Sequence[str | Path]) -> Iterator[Path]:
    """Files as given; folders walked recursively for images, in sorted order."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for sub in sorted(path.rglob("*")):
                if sub.is_file() and is_image(sub):
                    yield sub
        elif path.exists():
            yield path
        else:
            raise FileNotFoundError(f"{path} does not exist; give image files or folders")


__all__ = ["Inspector", "Prediction", "Region", "expand_inputs"]
