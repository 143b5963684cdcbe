"""The same call twice (a bundle through the Inspector against its run's predictions.csv, or
two backends), allowing only what score noise of SCORE_TOLERANCE can move: another CPU
kernel or batch size changes a score by about 1e-7, so a score within the tolerance of a
threshold, a class probability within it of the best, or a pixel within it of the mask
threshold may fall either side. Everything else must agree exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from defectkit.predictions import SCORE_TOLERANCE as TOL


def assert_same_class_call(prediction: Any, row: dict[str, str]) -> None:
    """A classifier's label; a different one only where the two best classes tie."""
    scores = {k[len("score_") :]: float(v) for k, v in row.items() if k.startswith("score_")}
    for name, value in scores.items():
        assert prediction.scores[name] == pytest.approx(value, rel=TOL, abs=TOL)
    if prediction.label != row["label"]:
        gap = abs(scores[prediction.label] - scores[row["label"]])
        assert gap <= 2 * TOL, (prediction.image, prediction.label, row["label"], gap)


def assert_same_mask_call(prediction: Any, row: dict[str, str], inspector: Any) -> None:
    """A segmenter's gate, OK/NG, mask pixels and regions against the run's row."""
    gate = prediction.scores["gate"]
    assert gate == pytest.approx(float(row["score_gate"]), abs=TOL)
    if abs(gate - inspector.threshold) <= TOL:
        return  # at the threshold: either call is the bundle's
    gate_open = gate >= inspector.threshold
    assert prediction.ok == (not gate_open)  # the gate decides OK/NG
    assert (prediction.label, str(prediction.ok)) == (row["label"], row["ok"])
    expected = int(row["predicted_pixels"]) if gate_open else 0
    level = inspector.meta["mask_threshold"]
    near = int((np.abs(prediction.heat_map - level) <= TOL).sum()) if gate_open else 0
    assert abs(int(prediction.mask.sum()) - expected) <= near
    if near == 0:
        assert len(prediction.regions) == int(row["regions"])


def assert_same_anomaly_call(prediction: Any, row: dict[str, str], threshold: float) -> None:
    """An anomaly model's raw score, OK/NG and regions against the run's row (`threshold`:
    the run's raw threshold)."""
    raw = prediction.scores["anomaly_score"]
    assert raw == pytest.approx(float(row["score_anomaly_score"]), rel=TOL, abs=TOL)
    if abs(raw - threshold) <= TOL * max(1.0, abs(threshold)):
        return  # at the threshold: either call is the bundle's
    assert prediction.ok == (row["ok"] == "True") and prediction.label == row["label"]
    near = int((np.abs(prediction.heat_map - 0.5) <= TOL).sum())
    if near == 0:
        assert len(prediction.regions) == int(row["regions"])
