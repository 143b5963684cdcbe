"""Prediction rows on disk: one format for `defectkit predict` and a run's predictions.csv,
so what a report lists and what the shipped bundle says on the line read the same way.

CSV columns: image, label, ok, ng_score, threshold, regions (a count), score_<name> for every
score the model gives, error (why a file was skipped; empty otherwise), then any extra
columns the caller adds (a run adds `truth`). JSONL holds the same fields, with the regions
as boxes and the scores as a mapping."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

BASE_COLUMNS = ["image", "label", "ok", "ng_score", "threshold", "regions"]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.9g}"  # round-trips a float32


class PredictionWriter:
    """Writes predictions (and files that could not be inspected) as CSV or JSONL, one row
    at a time, so a long run's output grows as it goes."""

    def __init__(self, path: Path, score_names: list[str], extra: list[str] | None = None):
        self.path, self.jsonl = Path(path), Path(path).suffix == ".jsonl"
        self.extra = list(extra or [])
        self.columns = [
            *BASE_COLUMNS,
            *(f"score_{name}" for name in score_names),
            "error",
            *self.extra,
        ]
        self.handle: TextIO | None = None
        self.writer: Any = None
        self.rows = 0

    def __enter__(self) -> PredictionWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w", newline="")
        if not self.jsonl:
            self.writer = csv.DictWriter(self.handle, fieldnames=self.columns)
            self.writer.writeheader()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.handle is not None
        self.handle.close()

    def write(self, prediction: Any, **extra: Any) -> None:
        if self.jsonl:
            row = {
                "image": prediction.image,
                "label": prediction.label,
                "ok": prediction.ok,
                "ng_score": prediction.ng_score,
                "threshold": prediction.threshold,
                "scores": prediction.scores,
                "regions": [asdict(r) for r in prediction.regions],
                "error": None,
                **extra,
            }
        else:
            row = {
                "image": prediction.image,
                "label": prediction.label,
                "ok": "" if prediction.ok is None else prediction.ok,
                "ng_score": _number(prediction.ng_score),
                "threshold": _number(prediction.threshold),
                "regions": len(prediction.regions),
                **{f"score_{k}": _number(v) for k, v in prediction.scores.items()},
                "error": "",
                **extra,
            }
        self._emit(row)

    def write_error(self, image: str, error: str, **extra: Any) -> None:
        """A file that could not be inspected: its row says why, the rest stays empty."""
        self._emit({"image": image, "error": error, **extra})

    def _emit(self, row: dict[str, Any]) -> None:
        assert self.handle is not None
        if self.jsonl:
            self.handle.write(json.dumps(row) + "\n")
        else:
            self.writer.writerow({k: row.get(k, "") for k in self.columns})
        self.rows += 1
