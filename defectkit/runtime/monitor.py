"""Watching a served model over time: what it was calibrated on (the baseline), what it sees
now (a window of recent images), and whether the two have drifted apart.

The baseline (`baseline.json` in the bundle folder) holds the model's score on each of its
validation images (where its threshold was chosen) and simple statistics of its training
images: brightness and contrast (mean and standard deviation of the grey levels, 0-1), width
and height. A training run writes it (`defectkit train`), `defectkit baseline` writes it for
any bundle and labelled folder.

Live, the service keeps the last `window` images and compares each statistic with the
baseline by the population stability index (PSI, over the baseline's deciles; the usual
reading: < 0.1 stable, 0.1-0.25 some shift, > 0.25 a real shift) and the two-sample
Kolmogorov-Smirnov statistic. A statistic whose PSI passes the limit, once at least
`min_count` images are in the window, raises a warning. Everything is exported at /metrics
in the Prometheus text format (prometheus_client)."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from defectkit.data.images import load_image

BASELINE_FILE = "baseline.json"
IMAGE_STATS = ("brightness", "contrast", "width", "height")
STATISTICS = ("score", *IMAGE_STATS)
STATS_SIDE = 256  # image statistics on a copy at most this big (fast, and size-independent)


def image_stats(image: Image.Image) -> dict[str, float]:
    width, height = image.size
    scale = min(1.0, STATS_SIDE / max(width, height))
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    # shrink first, then grey: no full-size copy of a large image
    grey = image.resize(small, reducing_gap=2.0).convert("L") if scale < 1 else image.convert("L")
    pixels = np.asarray(grey, dtype=np.float32) / 255.0
    return {
        "brightness": float(pixels.mean()),
        "contrast": float(pixels.std()),
        "width": float(width),
        "height": float(height),
    }


def monitored_score(prediction: Any) -> float:
    """The score a model is watched by: its NG score, or (a classifier without an OK class)
    its confidence in the class it chose."""
    if prediction.ng_score is not None:
        return float(prediction.ng_score)
    return float(max(prediction.scores.values()))


def build_baseline(
    inspector: Any,
    calibration: Sequence[Path],
    training: Sequence[Path],
    calibration_references: Sequence[Path] | None = None,
    limit: int = 1000,
) -> dict[str, Any]:
    """The scores of the calibration images through the Inspector (as served) and the image
    statistics of up to `limit` training images (spread evenly over the list)."""
    if not calibration or not training:
        raise ValueError("a baseline needs calibration images and training images")
    predictions = inspector.predict(calibration, 16, None, calibration_references)
    scores = [monitored_score(p) for p in predictions]
    step = max(1, len(training) // limit)
    stats = [image_stats(load_image(Path(path))) for path in list(training)[::step][:limit]]
    return {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "weights_sha256": inspector.meta.get("weights_sha256"),
        "scores": [round(s, 6) for s in scores],
        "images": {key: [round(s[key], 5) for s in stats] for key in IMAGE_STATS},
        "calibration_images": len(scores),
        "training_images": len(stats),
    }


def write_baseline(bundle_folder: Path, baseline: dict[str, Any]) -> Path:
    path = Path(bundle_folder) / BASELINE_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(baseline))
    temporary.replace(path)
    return path


def read_baseline(bundle_folder: Path) -> dict[str, Any] | None:
    path = Path(bundle_folder) / BASELINE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _codes(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin codes that keep a value equal to an edge in a bin of its own (ties are common:
    image sizes, scores clipped at 0 or 1)."""
    return np.searchsorted(edges, values, "left") + np.searchsorted(edges, values, "right")


def psi(expected: Sequence[float], actual: Sequence[float], bins: int = 10) -> float:
    """Population stability index of `actual` against `expected`, over the expected
    values' quantile bins; empty bins count as 1e-4 of the mass."""
    expected, actual = np.asarray(expected, float), np.asarray(actual, float)
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)[1:-1]))
    size = 2 * len(edges) + 1
    e = np.bincount(_codes(expected, edges), minlength=size) / len(expected)
    a = np.bincount(_codes(actual, edges), minlength=size) / len(actual)
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(expected: Sequence[float], actual: Sequence[float]) -> float:
    from scipy.stats import ks_2samp

    return float(ks_2samp(expected, actual, method="asymp").statistic)


class DriftMonitor:
    """Running statistics of a served model, thread-safe, with its Prometheus metrics in
    `registry`. `observe` each inspected image; `state()` is what the page shows."""

    def __init__(
        self,
        baseline: dict[str, Any] | None,
        registry: CollectorRegistry | None = None,
        window: int = 500,
        min_count: int = 30,
        psi_limit: float = 0.25,
        trend_every: int = 20,
    ):
        self.baseline = baseline
        self.window, self.min_count, self.psi_limit = window, min_count, psi_limit
        self.trend_every = trend_every
        self.registry = registry or CollectorRegistry()
        self._lock = threading.Lock()
        self._recent: dict[str, deque] = {k: deque(maxlen=window) for k in STATISTICS}
        self._ng: deque = deque(maxlen=window)
        self._ms: deque = deque(maxlen=window)
        self._trend: deque = deque(maxlen=60)
        self._seen = 0
        self.inspected = Counter(
            "defectkit_inspections",
            "images inspected, by verdict",
            ["verdict"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "defectkit_rejected",
            "uploads refused (not an image, too big, corrupt...)",
            registry=self.registry,
        )
        self.latency = Histogram(
            "defectkit_inspect_seconds",
            "inference time per image",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.feedback = Counter(
            "defectkit_feedback",
            "operator answers, by whether they overturned the call",
            ["overturned"],
            registry=self.registry,
        )
        self.shadow = Counter(
            "defectkit_shadow",
            "candidate model calls in shadow mode, by agreement",
            ["agrees"],
            registry=self.registry,
        )
        ng_rate = Gauge(
            "defectkit_ng_rate",
            "share of NG calls among the recent images",
            registry=self.registry,
        )
        ng_rate.set_function(lambda: self._ng_rate() or 0.0)
        drift = Gauge(
            "defectkit_drift_psi",
            "population stability index of a statistic of the recent images against the baseline",
            ["statistic"],
            registry=self.registry,
        )
        ks = Gauge(
            "defectkit_drift_ks",
            "two-sample Kolmogorov-Smirnov statistic against the baseline",
            ["statistic"],
            registry=self.registry,
        )
        warning = Gauge(
            "defectkit_drift_warning",
            "1 when the statistic's PSI is over the limit",
            ["statistic"],
            registry=self.registry,
        )
        if baseline is not None:
            for key in STATISTICS:
                drift.labels(key).set_function(lambda k=key: self._drift(k)[0])
                ks.labels(key).set_function(lambda k=key: self._drift(k)[1])
                warning.labels(key).set_function(lambda k=key: float(self._warns(k)))

    def _expected(self, key: str) -> list[float]:
        if self.baseline is None:
            return []
        return self.baseline["scores"] if key == "score" else self.baseline["images"][key]

    def _drift(self, key: str) -> tuple[float, float]:
        with self._lock:
            recent = list(self._recent[key])
        expected = self._expected(key)
        if not recent or not expected:
            return 0.0, 0.0
        return psi(expected, recent), ks_statistic(expected, recent)

    def _warns(self, key: str) -> bool:
        with self._lock:
            count = len(self._recent[key])
        return count >= self.min_count and self._drift(key)[0] > self.psi_limit

    def _ng_rate(self) -> float | None:
        with self._lock:
            calls = [n for n in self._ng if n is not None]
        return sum(calls) / len(calls) if calls else None

    def observe(self, prediction: Any, image: Image.Image, seconds: float) -> None:
        verdict = "none" if prediction.ok is None else ("ok" if prediction.ok else "ng")
        self.inspected.labels(verdict).inc()
        self.latency.observe(seconds)
        values = {"score": monitored_score(prediction), **image_stats(image)}
        with self._lock:
            for key, value in values.items():
                self._recent[key].append(value)
            self._ng.append(None if prediction.ok is None else (not prediction.ok))
            self._ms.append(seconds * 1000)
            self._seen += 1
            due = self._seen % self.trend_every == 0
        if due:
            point = {"t": round(time.time(), 1), "n": self._seen, "ng_rate": self._ng_rate()}
            if self.baseline is not None:
                point["psi_score"] = round(self._drift("score")[0], 4)
            with self._lock:
                self._trend.append(point)

    def observe_rejected(self, count: int = 1) -> None:
        self.rejected.inc(count)

    def state(self) -> dict[str, Any]:
        """Counts, NG rate, latency and drift of the recent images, the warnings and a trend."""
        with self._lock:
            count = len(self._ms)
            ms = sorted(self._ms)
            trend = list(self._trend)
        statistics = {}
        warnings = []
        if self.baseline is not None:
            for key in STATISTICS:
                value_psi, value_ks = self._drift(key)
                statistics[key] = {"psi": round(value_psi, 4), "ks": round(value_ks, 4)}
                if count >= self.min_count and value_psi > self.psi_limit:
                    warnings.append(
                        f"{key} has drifted from the baseline: PSI {value_psi:.2f} over the "
                        f"limit {self.psi_limit} on the last {count} images"
                    )
        return {
            "window": count,
            "seen": self._seen,
            "ng_rate": self._ng_rate(),
            "ms_p50": ms[len(ms) // 2] if ms else None,
            "baseline": self.baseline is not None,
            "psi_limit": self.psi_limit,
            "min_count": self.min_count,
            "statistics": statistics,
            "warnings": warnings,
            "trend": trend,
        }
