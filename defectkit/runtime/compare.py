"""Two bundles on one frozen "golden" set: before a candidate replaces the current model,
their metrics side by side, every per-class number's change, McNemar's test on their paired
decisions, the speed of each, and the images whose verdict flips, as report.html."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectkit.data.images import load_image
from defectkit.data.samples import Sample
from defectkit.metrics import mcnemar
from defectkit.runtime.evaluate import LabelledData, labelled_data, left_out_of
from defectkit.runtime.inspector import Inspector
from defectkit.tasks import Task, get_task

LATENCY_IMAGES = 32  # batch-1 latency measured on at most this many images
GALLERY = 24  # flipped verdicts shown at most


class _Recording:
    """An Inspector that keeps every prediction a task's evaluation asks of it."""

    def __init__(self, inspector: Inspector):
        self._inspector = inspector
        self.predictions: list[Any] = []
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inspector, name)

    def predict(self, *args: Any, **kwargs: Any):
        tick = time.perf_counter()
        for prediction in self._inspector.predict(*args, **kwargs):
            self.seconds += time.perf_counter() - tick
            self.predictions.append(prediction)
            yield prediction
            tick = time.perf_counter()


def decision(task: Task, prediction: Any) -> str:
    """What an operator acts on: a classifier's class, else OK / NG."""
    if task.decides_by_class or prediction.ok is None:
        return prediction.label
    return "OK" if prediction.ok else "NG"


def truth(task: Task, sample: Sample, classes: Sequence[str]) -> str:
    """The decision the image should get, in the terms of `decision`."""
    return judge(task)(sample, classes)


def judge(task: Task) -> Callable[[Sample, Sequence[str]], str]:
    """The task's rule for the call a labelled image should get; a task without one is
    refused by name (never read as some other task's labels)."""
    if task.truth is None:
        raise ValueError(
            f"the {task.name} task does not say what a labelled image should be called "
            "(its deploy.py has no truth): its bundles cannot be compared"
        )
    return task.truth


def numbers(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number of a metrics dict by its dotted path (curves and matrices left out)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numbers(value, f"{path}."))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int | float):
            out[path] = float(value)
    return out


def batch1_ms(inspectors: Sequence[Inspector], samples: Sequence[Sample]) -> list[float]:
    """Median ms per image, one image at a time, the inspectors taking turns per image."""
    times: list[list[float]] = [[] for _ in inspectors]
    for sample in samples[:LATENCY_IMAGES]:
        image = load_image(sample.image)
        reference = load_image(sample.reference) if sample.reference else None
        for inspector, spent in zip(inspectors, times, strict=True):
            refs = [reference] if inspector.meta.get("reference") else None
            tick = time.perf_counter()
            inspector.predict_images([image], [str(sample.image)], refs)
            spent.append((time.perf_counter() - tick) * 1000)
    return [float(np.median(t)) for t in times]


def compare_bundles(
    bundle_a: str | Path,
    bundle_b: str | Path,
    data: LabelledData | str | Path,
    out: str | Path,
    backend: str = "torch",
    **options: Any,
) -> dict[str, Any]:
    """Evaluate both bundles on the same images (checked first), pair their decisions, and
    write compare.json and report.html into `out`. `data`: LabelledData, or its folder with
    LabelledData's other fields as options."""
    data = labelled_data(data, **options)
    a = Inspector(bundle_a, backend=backend, raw_maps=True)
    b = Inspector(bundle_b, backend=backend, raw_maps=True)
    if a.task != b.task:
        raise ValueError(
            f"{bundle_a} is a {a.task} model, {bundle_b} a {b.task} model: compare "
            "two models of the same task"
        )
    task = get_task(a.task)
    judge(task)  # a task that cannot be compared is refused before any image is read
    if task.decides_by_class and a.classes != b.classes:
        raise ValueError(
            f"the two models have different classes ({a.classes} and "
            f"{b.classes}): their decisions cannot be paired"
        )
    dataset, samples = data.read()
    recorded = [_Recording(a), _Recording(b)]
    metrics = [task.evaluate_bundle(r, samples, str(data.root)) for r in recorded]
    for r in recorded:
        if len(r.predictions) != len(samples):
            raise RuntimeError(f"{a.task} evaluation did not inspect every image once")
    truths = [truth(task, s, a.classes) for s in samples]
    calls = [[decision(task, p) for p in r.predictions] for r in recorded]
    right = [np.array([c == t for c, t in zip(cs, truths, strict=True)]) for cs in calls]
    test = mcnemar(int((right[0] & ~right[1]).sum()), int((~right[0] & right[1]).sum()))
    flips = [
        {
            "image": str(sample.image),
            "truth": t,
            "a": ca,
            "b": cb,
            "a_score": pa.ng_score,
            "b_score": pb.ng_score,
        }
        for sample, t, ca, cb, pa, pb in zip(
            samples, truths, *calls, *(r.predictions for r in recorded), strict=True
        )
        if ca != cb
    ]
    ms = batch1_ms([a, b], samples)
    first, second = (numbers(m) for m in metrics)
    deltas = {
        key: {"a": first[key], "b": second[key], "delta": second[key] - first[key]}
        for key in first
        if key in second
    }
    result = {
        "task": a.task,
        "data": str(data.root),
        "images": len(samples),
        **left_out_of(dataset),
        "bundles": {"a": str(bundle_a), "b": str(bundle_b)},
        "weights_sha256": {"a": a.meta.get("weights_sha256"), "b": b.meta.get("weights_sha256")},
        "decision_accuracy": {"a": float(right[0].mean()), "b": float(right[1].mean())},
        "mcnemar": test,
        "flipped": len(flips),
        "flips": flips,
        "ms_per_image_batch1": {"a": ms[0], "b": ms[1]},
        "ms_per_image_evaluation": {
            "a": 1000 * recorded[0].seconds / len(samples),
            "b": 1000 * recorded[1].seconds / len(samples),
        },
        "metrics": {"a": metrics[0], "b": metrics[1]},
        "deltas": deltas,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=1, default=str))
    write_report(result, out)
    return result


def write_report(result: dict[str, Any], out: Path) -> Path:
    from defectkit.report import embed, html_page, plot_image_grid, table

    names = result["bundles"]
    test = result["mcnemar"]
    verdict = (
        "the difference is significant at the 5% level"
        if test["p_exact"] < 0.05
        else "the difference could be chance (p >= 0.05)"
    )
    parts = [
        "<h1>Model comparison</h1>",
        f"<p>A = {html.escape(names['a'])}<br>B = {html.escape(names['b'])}<br>"
        f"on {result['images']} images of {html.escape(result['data'])} ({result['task']})</p>",
        *(
            f"<p>Left out, unreadable: {html.escape(bad['file'])} "
            f"({html.escape(bad['reason'])})</p>"
            for bad in result.get("left_out", [])
        ),
        "<h2>Decisions</h2>",
        table(
            [
                [
                    "right decisions",
                    result["decision_accuracy"]["a"],
                    result["decision_accuracy"]["b"],
                ],
                [
                    "ms per image, batch 1 (median)",
                    result["ms_per_image_batch1"]["a"],
                    result["ms_per_image_batch1"]["b"],
                ],
            ],
            ["", "A", "B"],
        ),
        f"<p class=big>McNemar: {test['only_a']} image(s) only A decides right, "
        f"{test['only_b']} only B; exact p = {test['p_exact']:.4g} "
        f"(chi-square {test['chi2']:.3f}, p = {test['p_chi2']:.4g}): {verdict}.</p>",
        "<h2>Every metric, side by side</h2>",
        table(
            [[k, v["a"], v["b"], f"{v['delta']:+.4f}"] for k, v in result["deltas"].items()],
            ["metric", "A", "B", "B - A"],
        ),
    ]
    flips = result["flips"]
    if flips:
        shown = flips[:GALLERY]
        grid = plot_image_grid(
            [(f["image"], f"truth {f['truth']}\nA {f['a']} / B {f['b']}") for f in shown],
            out / "flips.png",
        )
        parts += [
            f"<h2>{len(flips)} image(s) whose decision flips</h2>",
            f"<p>{'The first ' + str(len(shown)) + ' shown; ' if len(flips) > len(shown) else ''}"
            "all are listed in compare.json.</p>",
            embed(grid),
        ]
    else:
        parts.append("<h2>No decision flips</h2><p>Both models decide every image alike.</p>")
    path = out / "report.html"
    path.write_text(html_page("model comparison", parts))
    return path
