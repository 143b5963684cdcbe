"""RESULTS.md and the README's benchmark table, generated from benchmarks/results/*.json
alone: every measured number shown is a key of a run there (published anchors are cited as
text). Each row says where its numbers come from: the commit the run measured, its date and
machine, the images it trained and tested on; a run measured on another version of the
code (the code its task runs, or constraints.txt, changed since its commit: `code_paths`) or
with no commit recorded is marked stale.

    python benchmarks/tables.py            # rewrite RESULTS.md and the README's table
    python benchmarks/tables.py --check    # exit 1 where either differs from the JSON

Every benchmark script calls `write_tables()` after writing its JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
# what a run's numbers depend on: the package (code and recipes) and the library versions
CODE_PATHS = ("defectkit", "constraints.txt")
# a task is one folder under defectkit/tasks/ (defectkit/tasks/__init__.py)
TASKS = tuple(sorted(p.parent.name for p in (REPO / "defectkit" / "tasks").glob("*/__init__.py")))
# the task each protocol's runs train: their rows go stale only when code that task's runs
# can execute changes (code_paths); a protocol not named here (speed, serving, the cluster,
# no-recipe) depends on all of CODE_PATHS
PROTOCOL_TASK = {
    "neu6-classify": "classify",
    "neu6-fewshot": "classify",
    "elpv-classify": "classify",
    "demo": "classify",
    "mt-segment": "segment",
    "deeppcb-paired": "segment",
    "mt-anomaly": "anomaly",
    "neudet-detect": "detect",
    "deeppcb-detect": "detect",
    "thin-cracks": "detect",
}


@dataclass(frozen=True)
class Column:
    key: str  # a run's key; dotted for a nested one ("gate.ng_recall")
    header: str
    kind: str = "fraction"  # fraction | seconds | minutes | ms | mb | count | rate | text | classes


@dataclass(frozen=True)
class Section:
    title: str
    about: str  # what the protocol measures; published anchors as text, no measured number
    columns: tuple[Column, ...]
    extra: tuple[str, ...] = field(default=())  # keys of nested per-class tables


F = Column
SECTIONS: dict[str, Section] = {
    "neu6-classify": Section(
        "NEU-6 classification",
        "Per-class split of PROTOCOLS.md. Published: ResNet18 fine-tuned 100.0% in 3 min 16 s "
        "on a T4, frozen ImageNet features 97.9%, from scratch 98.5%.",
        (
            F("test_accuracy", "test accuracy", "fraction"),
            F("macro_f1", "macro F1"),
            F("train_seconds", "training s", "seconds"),
            F("peak_rss_mb", "peak MB", "mb"),
            F("images_per_second", "images/s", "rate"),
            F("trained_on", "trained on", "text"),
        ),
    ),
    "elpv-classify": Section(
        "ELPV solar cells",
        "Stratified 75/25 split (PROTOCOLS.md); OK/NG at the validation-chosen threshold, and "
        "the four defect probabilities as classes. Published: the dataset paper's CNN, 88.4% "
        "(4-class).",
        (
            F("auc", "ROC AUC"),
            F("accuracy", "OK/NG accuracy"),
            F("ng_f1", "NG F1"),
            F("ng_recall_at_95_specificity", "NG recall @ 95% spec."),
            F("accuracy_4class", "4-class accuracy"),
            F("balanced_accuracy_4class", "4-class balanced"),
            F("train_seconds_binary", "OK/NG training s", "seconds"),
            F("train_seconds_4class", "4-class training s", "seconds"),
            F("images_per_second", "images/s", "rate"),
            F("peak_rss_mb", "peak MB", "mb"),
        ),
    ),
    "mt-anomaly": Section(
        "Magnetic tile anomaly detection",
        "Fit on defect-free images only; the threshold calibrated on held-out defect-free "
        "images (no defect labels). Pixel metrics at each mask's own resolution. Published: "
        "DifferNet 0.977 image AUROC.",
        (
            F("method", "method", "text"),
            F("image_auroc", "image AUROC"),
            F("pixel_auroc", "pixel AUROC"),
            F("aupro", "AUPRO@30%"),
            F("f1_max", "F1-max"),
            F("f1_calibrated", "F1 calibrated"),
            F("fit_seconds", "fit s", "seconds"),
            F("ms_per_image", "ms/image", "ms"),
            F("peak_rss_mb", "peak MB", "mb"),
            F("model_mb", "model MB", "ms"),
        ),
        extra=("pixel_per_class",),
    ),
    "mt-segment": Section(
        "Magnetic tile segmentation",
        "Per-class split (PROTOCOLS.md); test-split defect IoU, Dice, mIoU; OK/NG from the "
        "gate; CPU ms per image of each model on this machine. Published: DEU-Net 66.94 mIoU.",
        (
            F("defect_iou", "defect IoU"),
            F("dice", "Dice"),
            F("miou", "mIoU"),
            F("gate.ng_recall", "gate NG recall"),
            F("gate.ok_specificity", "gate OK spec."),
            F("train_seconds", "training s", "seconds"),
            F("trained_on", "trained on", "text"),
            F("cpu_ms_per_image", "CPU ms/image", "ms"),
            F("train_peak_rss_mb", "training peak MB", "mb"),
            F("cpu_peak_rss_mb", "inference peak MB", "mb"),
        ),
    ),
    "deeppcb-paired": Section(
        "DeepPCB segmentation: tested image alone vs with its template",
        "Official lists; masks are the filled boxes; box recall / precision at IoU >= 0.33 from "
        "connected regions. Published: 98.6% mAP, 98.2% F-score (dataset paper, a detector).",
        (
            F("defect_iou", "defect IoU"),
            F("dice", "Dice"),
            F("box_recall", "box recall"),
            F("box_precision", "box precision"),
            F("train_seconds", "training s", "seconds"),
            F("trained_on", "trained on", "text"),
            F("cpu_ms_per_image", "CPU ms/image", "ms"),
            F("train_peak_rss_mb", "training peak MB", "mb"),
            F("cpu_peak_rss_mb", "inference peak MB", "mb"),
        ),
    ),
    "neudet-detect": Section(
        "NEU-DET detection",
        "The NEU-6 split; COCO evaluation of every box the bundle keeps; precision and recall "
        "of the called boxes (score >= the bundle's threshold) at IoU >= 0.5. Published "
        "mAP@0.5 (splits differ): Faster R-CNN 71.3, RetinaNet 70.2, YOLOv8l 73.4, YOLO11n "
        "75.3, YOLOv6-3.0-l 77.0, DDN 82.3.",
        (
            F("map50", "mAP@0.5"),
            F("map50_95", "mAP@0.5:0.95"),
            F("ap50_per_class", "AP@0.5 per class", "classes"),
            F("precision", "box precision"),
            F("recall", "box recall"),
            F("train_seconds", "training min", "minutes"),
            F("trained_on", "trained on", "text"),
            F("cpu_ms_per_image", "torch ms", "ms"),
            F("onnx_ms_per_image", "ONNX ms", "ms"),
            F("peak_rss_mb", "training peak MB", "mb"),
            # the machine's speed before -> after the training: one fixed training step
            # (benchmarks/common.yardstick_step_seconds); tells a slow day from a slow recipe
            F("yardstick_step_s", "yardstick step s", "ms_s"),
        ),
    ),
    "deeppcb-detect": Section(
        "DeepPCB detection",
        "Official lists; boards tiled at full resolution; recall / precision of the called "
        "boxes at the dataset's IoU >= 0.33; `default` is the shipped recipe (paired with the "
        "template). Published: 98.6% mAP (dataset paper).",
        (
            F("map50_paired", "mAP@0.5 paired"),
            F("map50_single", "mAP@0.5 alone"),
            F("map50_95_paired", "mAP@0.5:0.95 paired"),
            F("map50", "mAP@0.5"),
            F("ap50_per_class", "AP@0.5 per type", "classes"),
            F("precision", "box precision"),
            F("recall", "box recall"),
            F("train_seconds", "training min", "minutes"),
            F("trained_on", "trained on", "text"),
            F("ms_per_image", "ms per board", "ms"),
            F("peak_rss_mb", "peak MB", "mb"),
            # the machine's speed before -> after the training: one fixed training step
            # (benchmarks/common.yardstick_step_seconds); tells a slow day from a slow recipe
            F("yardstick_step_s", "yardstick step s", "ms_s"),
        ),
    ),
    "neu6-fewshot": Section(
        "NEU-6 few-shot",
        "k training images per class, 5 seeded subsets each (PROTOCOLS.md), the NEU-6 test "
        "split. Anchor: the MVTec carpet study, 66.7% at 17 images per class.",
        (
            F("k", "k", "count"),
            F("curve", "path", "text"),
            F("accuracy_mean", "accuracy mean"),
            F("accuracy_std", "std"),
            F("seconds_mean", "s per run", "seconds"),
        ),
    ),
    "inference-speed": Section(
        "Inference speed: PyTorch eager vs ONNX Runtime",
        "End to end through the Inspector on decoded real test images, this CPU.",
        (
            F("model", "model", "text"),
            F("backend", "backend", "text"),
            F("batch1_ms_p50", "batch 1 p50 ms", "ms"),
            F("batch1_ms_p95", "batch 1 p95 ms", "ms"),
            F("batch16_images_per_second", "batch 16 images/s", "rate"),
        ),
    ),
    "serve-load": Section(
        "The service under load",
        "Concurrent clients on loopback sending real NEU test images, malformed uploads mixed "
        "in (each must get a 4xx), operator feedback and /metrics scrapes.",
        (
            F("backend", "backend", "text"),
            F("clients", "clients", "count"),
            F("seconds", "seconds", "seconds"),
            F("requests", "requests", "count"),
            F("requests_per_second", "requests/s", "rate"),
            F("errors", "errors", "count"),
            F("p95_ms", "p95 ms", "ms"),
            F("peak_rss_mb", "peak MB", "mb"),
            F("malformed_sent", "malformed sent", "count"),
            F("malformed_rejected", "malformed rejected", "count"),
            F("feedback_stored", "feedback stored", "count"),
        ),
    ),
    "serve-cold-start": Section(
        "The service's cold start",
        "A fresh process starts the app on a bundle and answers one /inspect request; medians "
        "of the repeats. `code` is the commit measured: an earlier one gives the before row.",
        (
            F("task", "task", "text"),
            F("code", "code", "text"),
            F("wall_s", "to first answer s", "ms_s"),
            F("import_s", "import s", "ms_s"),
            F("app_s", "app s", "ms_s"),
            F("first_request_s", "first request s", "ms_s"),
            F("peak_rss_mb", "peak MB", "mb"),
            F("defectkit_modules", "defectkit modules", "count"),
            F("heavy_imported", "training / plotting imported", "text"),
        ),
    ),
    "ray-predict": Section(
        "Batch inspection on Ray vs the local engine",
        "The same images through `predict` locally and on a local Ray cluster on the same cores.",
        (
            F("images", "images", "count"),
            F("cpus", "CPUs", "count"),
            F("local_images_per_second", "local images/s", "rate"),
            F("ray_images_per_second", "Ray images/s", "rate"),
            F("ray_start_seconds", "Ray start s", "ms_s"),
            F("same_calls", "same calls", "fraction"),
        ),
    ),
    "no-recipe": Section(
        "No recipe: `--task` and `--data` only",
        "Settings drawn from the data and the device, against the tuned recipe.",
        (
            F("data", "data", "text"),
            F("task", "task", "text"),
            F("metric", "metric", "text"),
            F("value", "drawn settings", "fraction"),
            F("recipe_value", "recipe", "fraction"),
            F("seconds", "s", "seconds"),
            F("recipe_seconds", "recipe s", "seconds"),
        ),
    ),
    "thin-cracks": Section(
        "Thin cracks (synthetic)",
        "FCOS's training assignments, and Faster R-CNN, on 4 px cracks of 1:9 to 1:30 on "
        "tall strips (benchmarks/thin_cracks.py: the slow test's data and settings, one seed).",
        (
            F("map50", "mAP@0.5"),
            F("map50_95", "mAP@0.5:0.95"),
            F("recall", "box recall"),
            F("precision", "box precision"),
            F("train_seconds", "training s", "seconds"),
        ),
    ),
    "demo": Section(
        "`defectkit demo`",
        "README command 1 on a fresh install: ELPV OK/NG, EfficientNet-Lite0, 128 px.",
        (
            F("auc", "ROC AUC"),
            F("accuracy", "accuracy"),
            F("train_seconds", "training s", "seconds"),
            F("wall_seconds", "whole command s", "seconds"),
        ),
    ),
}


@dataclass(frozen=True)
class ReadmeRow:
    what: str
    protocol: str
    run: str
    columns: tuple[Column, ...]
    anchor: str = ""


R = ReadmeRow
README_ROWS = (
    R(
        "NEU-6, fine-tune EfficientNet-Lite0 128 px",
        "neu6-classify",
        "default",
        (F("test_accuracy", "accuracy"), F("train_seconds", "training s", "seconds")),
        "ResNet18 100% in 3 min 16 s on a T4",
    ),
    R(
        "NEU-6, frozen features + linear head",
        "neu6-classify",
        "frozen",
        (F("test_accuracy", "accuracy"), F("train_seconds", "training s", "seconds")),
        "published 97.9%",
    ),
    R(
        "NEU-6 few-shot, 10 images per class",
        "neu6-fewshot",
        "default",
        (F("accuracy_mean", "accuracy mean"), F("accuracy_std", "std")),
        "MVTec carpet study 66.7% at 17 per class",
    ),
    R(
        "ELPV OK/NG and 4 grades",
        "elpv-classify",
        "default",
        (F("auc", "ROC AUC"), F("accuracy", "accuracy"), F("accuracy_4class", "4-class")),
        "paper's CNN 88.4% (4-class)",
    ),
    R(
        "ELPV 4 grades, ordinal loss + test-time flips",
        "elpv-classify",
        "ordinal_tta",
        (F("accuracy_4class", "4-class"), F("balanced_accuracy_4class", "balanced")),
        "paper's CNN 88.4%",
    ),
    R(
        "Magnetic tile anomaly, PatchCore + PaDiM",
        "mt-anomaly",
        "default",
        (
            F("image_auroc", "image AUROC"),
            F("pixel_auroc", "pixel AUROC"),
            F("aupro", "AUPRO"),
            F("fit_seconds", "fit s", "seconds"),
            F("ms_per_image", "ms/image", "ms"),
            F("peak_rss_mb", "peak MB", "mb"),
        ),
        "DifferNet 0.977",
    ),
    R(
        "Magnetic tile anomaly, inpainting autoencoder",
        "mt-anomaly",
        "autoencoder",
        (
            F("image_auroc", "image AUROC"),
            F("pixel_auroc", "pixel AUROC"),
            F("fit_seconds", "fit s", "seconds"),
        ),
    ),
    R(
        "Magnetic tile segmentation, U-Net Lite0, 40 epochs",
        "mt-segment",
        "default",
        (
            F("defect_iou", "defect IoU"),
            F("miou", "mIoU"),
            F("gate.ng_recall", "gate NG recall"),
            F("gate.ok_specificity", "OK spec."),
            F("cpu_ms_per_image", "CPU ms/image", "ms"),
        ),
        "DEU-Net 66.94 mIoU",
    ),
    R(
        "Magnetic tile segmentation within a CPU budget",
        "mt-segment",
        "cpu_budget",
        (
            F("defect_iou", "defect IoU"),
            F("miou", "mIoU"),
            F("train_seconds", "training s", "seconds"),
        ),
    ),
    R(
        "DeepPCB segmentation, with the template",
        "deeppcb-paired",
        "paired",
        (F("defect_iou", "defect IoU"), F("box_recall", "box recall")),
        "98.2% F-score (a detector)",
    ),
    R(
        "NEU-DET boxes, FCOS on Lite0",
        "neudet-detect",
        "default",
        (
            F("map50", "mAP@0.5"),
            F("map50_95", "mAP@0.5:0.95"),
            F("precision", "box precision"),
            F("recall", "box recall"),
            F("train_seconds", "training min", "minutes"),
            F("onnx_ms_per_image", "ONNX ms", "ms"),
        ),
        "YOLOv8l 73.4, YOLO11n 75.3 (GPU, 640 px)",
    ),
    R(
        "DeepPCB boxes, board + template",
        "deeppcb-detect",
        "default",
        (
            F("map50_paired", "mAP@0.5"),
            F("map50_single", "alone"),
            F("precision", "box precision"),
            F("recall", "box recall"),
        ),
        "98.6% mAP (dataset paper)",
    ),
    R(
        "Inference, NEU-6 model, ONNX Runtime",
        "inference-speed",
        "neu6-onnx",
        (
            F("batch1_ms_p50", "batch 1 p50 ms", "ms"),
            F("batch16_images_per_second", "batch 16 images/s", "rate"),
        ),
    ),
    R(
        "Inference, NEU-6 model, PyTorch",
        "inference-speed",
        "neu6-torch",
        (
            F("batch1_ms_p50", "batch 1 p50 ms", "ms"),
            F("batch16_images_per_second", "batch 16 images/s", "rate"),
        ),
    ),
    R(
        "Service under load (ONNX)",
        "serve-load",
        "onnx",
        (
            F("clients", "clients", "count"),
            F("requests_per_second", "requests/s", "rate"),
            F("errors", "errors", "count"),
            F("p95_ms", "p95 ms", "ms"),
        ),
        "zero errors",
    ),
    R(
        "Batch inspection, local vs Ray",
        "ray-predict",
        "default",
        (
            F("local_images_per_second", "local images/s", "rate"),
            F("ray_images_per_second", "Ray images/s", "rate"),
        ),
    ),
)


def formatted(value: Any, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "text":
        return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    if kind == "classes":
        return ", ".join(f"{k} {formatted(v, 'fraction')}" for k, v in value.items())
    if isinstance(value, list):  # a value measured at several moments: before -> after
        return " → ".join(formatted(v, kind) for v in value)
    if isinstance(value, bool):
        return str(value)
    if kind == "count":
        return f"{value:.0f}"
    if kind in ("seconds", "mb"):
        return f"{value:.0f}"
    if kind == "minutes":
        return f"{value / 60:.1f}"
    if kind == "ms_s":  # seconds to a hundredth
        return f"{value:.2f}"
    if kind in ("ms", "rate"):
        return f"{value:.1f}"
    return f"{value:.3f}"


def lookup(run: dict[str, Any], key: str) -> Any:
    value: Any = run
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


@functools.cache
def code_paths(task: str | None) -> tuple[str, ...]:
    """git pathspecs of what a run of `task` depends on: CODE_PATHS without the other tasks'
    folders (defectkit/tasks/<other>/), the modules only they import (by the import graph,
    grimp's, as lint-imports reads it: models/detector.py is detect's alone) and the other
    tasks' recipes. Kept: every module reachable by imports from one that nothing imports
    (the package, the command line, a module the task registry loads by name) outside the
    other tasks' folders: whatever cannot be shown to be another task's counts."""
    if task is None:
        return CODE_PATHS
    import grimp
    import yaml

    graph = grimp.build_graph("defectkit")
    others = tuple(f"defectkit.tasks.{t}" for t in TASKS if t != task)
    theirs = {m for m in graph.modules if any(m == o or m.startswith(o + ".") for o in others)}
    roots = {m for m in graph.modules - theirs if not graph.find_modules_that_directly_import(m)}
    everything = set(graph.modules)
    for module in theirs:  # imports through another task's code do not count
        graph.remove_module(module)
    kept = roots.union(*(graph.find_upstream_modules(r) for r in roots))
    owned = everything - kept
    files = set()
    for module in owned:
        path = REPO.joinpath(*module.split("."))
        files.add(path / "__init__.py" if path.is_dir() else path.with_suffix(".py"))
    for recipe in (REPO / "defectkit" / "configs").glob("*.yaml"):
        if (yaml.safe_load(recipe.read_text()) or {}).get("task") not in (task, None):
            files.add(recipe)
    excluded = sorted(f":(exclude){f.relative_to(REPO).as_posix()}" for f in files)
    return (*CODE_PATHS, *excluded)


def freshness(sha: str | None, protocol: str | None = None) -> str:
    """'' when the run measured the code its protocol's task runs as it is now
    (code_paths); else why its numbers may be stale."""
    if not sha:
        return "stale: no commit recorded"
    if sha.endswith("+dirty"):
        return "stale: measured with uncommitted changes"
    if _git("cat-file", "-e", f"{sha}^{{commit}}").returncode != 0:
        return "stale: commit not in this history"
    paths = code_paths(PROTOCOL_TASK.get(protocol or ""))
    if _git("diff", "--quiet", sha, "HEAD", "--", *paths).returncode != 0:
        return "stale: code changed since"
    return ""


def provenance(run: dict[str, Any], machines: list[str], protocol: str) -> list[str]:
    sha = run.get("git_sha")
    commit = f"`{sha[:8]}`" if sha else "—"
    why = freshness(sha, protocol)
    machine = run.get("machine") or "not recorded"
    if machine not in machines:
        machines.append(machine)
    images = run.get("images")
    counts = (
        "/".join(str(images.get(p, "—")) for p in ("train", "val", "test"))
        if isinstance(images, dict)
        else "—"
    )
    return [counts, run.get("date") or "—", f"m{machines.index(machine) + 1}", commit, why]


def table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def load(protocol: str) -> dict[str, Any] | None:
    path = RESULTS / f"{protocol}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def per_class_table(runs: list[dict[str, Any]], key: str) -> str:
    rows, columns = [], []
    for run in runs:
        for name, values in (run.get(key) or {}).items():
            columns += [c for c in values if c not in columns]
            rows.append((run["name"], name, values))
    if not rows:
        return ""
    body = [[r, n, *(formatted(v.get(c), "fraction") for c in columns)] for r, n, v in rows]
    return f"Per class (`{key}`):\n\n" + table(body, ["run", "class", *columns])


def section(protocol: str, spec: Section, payload: dict[str, Any]) -> str:
    machines: list[str] = []
    runs = payload["runs"]
    rows = [
        [
            run["name"],
            *(formatted(lookup(run, c.key), c.kind) for c in spec.columns),
            *provenance(run, machines, protocol),
        ]
        for run in runs
    ]
    header = ["run", *(c.header for c in spec.columns)]
    header += ["images train/val/test", "date", "machine", "commit", "stale"]
    parts = [
        f"## {spec.title} (`{protocol}`)",
        spec.about,
        table(rows, header),
        "Machines: " + "; ".join(f"m{n + 1} {m}" for n, m in enumerate(machines)) + ".",
        "Commands:\n\n"
        + "\n".join(
            f"- {run['name']}: `{run.get('command') or payload.get('command')}`"
            + (f" ({run['provenance']})" if run.get("provenance") else "")
            + (f". {run['note']}" if run.get("note") else "")
            for run in runs
        ),
    ]
    parts += [per_class_table(runs, key) for key in spec.extra]
    return "\n\n".join(p for p in parts if p)


def results_md() -> str:
    parts = [
        "# Benchmark results",
        "Generated by `python benchmarks/tables.py` from `benchmarks/results/*.json` (every "
        "number below is a key of a run there); each benchmark script rewrites this file "
        "after its runs. A run is stale where the package changed after the commit it "
        "measured, or where no commit was recorded (runs before provenance was kept).",
    ]
    for protocol, spec in SECTIONS.items():
        payload = load(protocol)
        if payload is not None:
            parts.append(section(protocol, spec, payload))
    return "\n\n".join(parts) + "\n"


def readme_table() -> str:
    rows = []
    for row in README_ROWS:
        payload = load(row.protocol)
        run = next((r for r in (payload or {}).get("runs", []) if r["name"] == row.run), None)
        if run is None:
            continue
        result = "; ".join(
            f"{c.header} {formatted(lookup(run, c.key), c.kind)}" for c in row.columns
        )
        where = run.get("trained_on") or ""
        sha = run.get("git_sha")
        measured = ", ".join(
            x
            for x in (
                where,
                run.get("date") or "",
                f"`{sha[:8]}`" if sha else "",
                freshness(sha, row.protocol),
            )
            if x
        )
        rows.append([row.what, f"`{row.protocol}` {row.run}", result, measured, row.anchor])
    return table(rows, ["what", "protocol, run", "result", "measured", "published / target"])


README_BEGIN = "<!-- benchmarks: generated by benchmarks/tables.py -->"
README_END = "<!-- /benchmarks -->"


DEMO_BEGIN = "<!-- demo: generated by benchmarks/tables.py -->"
DEMO_END = "<!-- /demo -->"


def demo_sentence() -> str:
    """README command 1's numbers, from results/demo.json."""
    payload = load("demo")
    run = next((r for r in (payload or {}).get("runs", []) if r["name"] == "default"), None)
    if run is None:
        return "Not measured yet: `python benchmarks/demo.py` measures it."
    sha = run.get("git_sha")
    stale = freshness(sha, "demo")
    return (
        f"Measured by `python benchmarks/demo.py` on {run['date']} ({run['machine']}, commit "
        f"`{(sha or 'none')[:8]}`{'; ' + stale if stale else ''}): ROC AUC "
        f"{formatted(run['auc'], 'fraction')} and accuracy "
        f"{formatted(run['accuracy'], 'fraction')} at the threshold chosen on the validation "
        f"images (the one the bundle applies), {formatted(run['train_seconds'], 'seconds')} s "
        f"of training, {formatted(run['wall_seconds'], 'seconds')} s for the whole command."
    )


def _replace_block(text: str, begin: str, end: str, body: str) -> str:
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"README.md has no {begin} ... {end} block")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text)


def readme_with_tables(text: str) -> str:
    text = _replace_block(text, README_BEGIN, README_END, readme_table())
    return _replace_block(text, DEMO_BEGIN, DEMO_END, demo_sentence())


def write_tables() -> None:
    (HERE / "RESULTS.md").write_text(results_md())
    readme = REPO / "README.md"
    readme.write_text(readme_with_tables(readme.read_text()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args()
    if not args.check:
        write_tables()
        return 0
    readme = (REPO / "README.md").read_text()
    stale = [
        name
        for name, now, then in (
            ("benchmarks/RESULTS.md", (HERE / "RESULTS.md").read_text(), results_md()),
            ("README.md", readme, readme_with_tables(readme)),
        )
        if now != then
    ]
    for name in stale:
        print(f"{name} differs from benchmarks/results/*.json: run python benchmarks/tables.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
