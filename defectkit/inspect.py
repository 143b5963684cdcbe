"""Inspector: a model bundle -> predictions for new images, the same from a script, the
command line or a service."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from defectkit.bundle import load_model
from defectkit.data.formats import DatasetError, is_image
from defectkit.data.images import load_image
from defectkit.data.transforms import eval_transform

OK_NAMES = ("ok", "good", "free", "normal", "pass")


@dataclass
class Prediction:
    image: str
    label: str
    scores: dict[str, float]
    ok: bool | None  # None when the model's classes say nothing about OK / NG
    ng_score: float | None = None
    threshold: float | None = None
    heat_map: Any = None  # anomaly: (H, W) numpy map at the model's input size


class Inspector:
    """Runs a bundle (a bundle folder or a run folder holding bundle/) on images."""

    def __init__(self, bundle: str | Path, backend: str = "torch", device: str = "cpu"):
        if backend != "torch":
            raise ValueError(f"backend {backend!r} is not available yet; use backend='torch'")
        self.model, self.meta = load_model(Path(bundle))
        self.task = self.meta["task"]
        self.device = torch.device(device)
        self.model.to(self.device)
        self.classes: list[str] = self.meta["classes"]
        prep = self.meta["preprocessing"]
        self.transform = eval_transform(
            size=self.meta["input_size"][0],
            mean=prep["mean"],
            std=prep["std"],
            interpolation=prep["interpolation"],
        )
        self.positive = self.meta.get("positive_class")
        self.threshold = self.meta.get("threshold")

    @torch.inference_mode()
    def predict_images(
        self, images: Sequence[Image.Image], names: Sequence[str]
    ) -> list[Prediction]:
        batch = torch.stack([self.transform(F.pil_to_tensor(im.convert("RGB"))) for im in images])
        if self.task == "anomaly":
            return self._anomaly(batch.to(self.device), names)
        probs = self.model(batch.to(self.device)).float().softmax(1).cpu()
        return [self._decide(name, row) for name, row in zip(names, probs, strict=True)]

    def _anomaly(self, batch: torch.Tensor, names: Sequence[str]) -> list[Prediction]:
        """Score = max of the smoothed map, compared with the threshold calibrated at fit."""
        from defectkit.models.anomaly import smooth_maps

        _, patch_maps = self.model(batch)
        maps = smooth_maps(
            patch_maps.float(),
            self.meta["input_size"][0],
            self.meta["method_options"]["blur_sigma"],
        ).cpu()
        good, bad = self.classes
        out = []
        for name, amap in zip(names, maps, strict=True):
            score = float(amap.max())
            ok = score < self.threshold
            out.append(
                Prediction(
                    name,
                    good if ok else bad,
                    {bad: score},
                    ok,
                    score,
                    self.threshold,
                    heat_map=amap.numpy(),
                )
            )
        return out

    def _decide(self, name: str, probs: torch.Tensor) -> Prediction:
        scores = {c: float(p) for c, p in zip(self.classes, probs, strict=True)}
        label = self.classes[int(probs.argmax())]
        if self.positive is not None and self.threshold is not None:
            ng_score = scores[self.positive]
            is_ng = ng_score >= self.threshold
            negatives = [c for c in self.classes if c != self.positive]
            label = self.positive if is_ng else max(negatives, key=scores.get)
            return Prediction(name, label, scores, not is_ng, ng_score, self.threshold)
        ok_class = next((c for c in self.classes if c.lower() in OK_NAMES), None)
        ok = None if ok_class is None else label == ok_class
        ng_score = None if ok_class is None else 1.0 - scores[ok_class]
        return Prediction(name, label, scores, ok, ng_score)

    def predict(
        self,
        paths: Iterable[str | Path],
        batch_size: int = 16,
        errors: list[dict[str, str]] | None = None,
    ) -> Iterator[Prediction]:
        """Stream predictions in batches; unreadable files go to `errors` (or raise)."""
        batch: list[Image.Image] = []
        names: list[str] = []
        for path in paths:
            try:
                batch.append(load_image(Path(path)))
                names.append(str(path))
            except DatasetError as error:
                if errors is None:
                    raise
                errors.append({"image": str(path), "error": str(error)})
            if len(batch) == batch_size:
                yield from self.predict_images(batch, names)
                batch, names = [], []
        if batch:
            yield from self.predict_images(batch, names)


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


__all__ = ["Inspector", "Prediction", "expand_inputs"]
