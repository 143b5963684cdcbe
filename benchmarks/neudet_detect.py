"""NEU-DET detection protocol (PROTOCOLS.md): the six classes' VOC boxes on the NEU-6
classification split; COCO mAP@0.5 and mAP@0.5:0.95 (pycocotools), AP@0.5 per class, the
training time and where it ran, and CPU ms per image (batch 1, p50) through the Inspector
with PyTorch and with ONNX Runtime on the run's own test images.

    python benchmarks/neudet_detect.py [--runs default,...] [--reuse]
    python benchmarks/neudet_detect.py --runs default_p70  # calibrated: after default

A calibrated row trains nothing: a copy of a trained run's folder whose box thresholds are
chosen again on its own validation images by `defectkit calibrate`.
"""

from __future__ import annotations

import time

import numpy as np
from common import (
    RUNS,
    SHARED_DATA,
    detect_row,
    parse_run_args,
    row_run,
    save_results,
    split_counts,
)

RUNS_DEFINED = {
    # name: (overrides, what it is)
    "default": (
        [],
        "FCOS, Lite0 (stem and first two stages frozen) + FPN, 256 px, 24 epochs, "
        "channels-last (the recipe)",
    ),
    # the recipe at 6d31eb0: a shorter cosine schedule
    "epochs_16": (["train.epochs=16"], "the recipe with 16 epochs"),
    # the recipe at 74ebc45: two epochs fewer, validated and shipped as the EMA of the weights
    "ema_14": (
        ["train.epochs=14", "train.ema=0.9998"],
        "the recipe with 14 epochs and an EMA of the weights (decay 0.9998)",
    ),
    # multi-scale training: each training image zoomed in or out by up to a quarter
    "scale_jitter": (["detect.scale_jitter=0.25"], "the recipe with detect.scale_jitter=0.25"),
    # YOLOv4's mosaic on half of the training inputs, whole images in the last 4 epochs
    "mosaic": (
        ["detect.mosaic=0.5", "detect.mosaic_off_epochs=4"],
        "the recipe with detect.mosaic=0.5 (four images' crops in one input), none in the "
        "last 4 epochs",
    ),
    # the recipe at 6ebae7d (every stage trained) with Detectron2's FREEZE_AT=2: the stem
    # and the stride-2 and stride-4 stages keep their ImageNet weights and statistics, no
    # backward pass through them (a step ~1/3 shorter); the recipe since
    "frozen_stages_2": (
        ["detect.frozen_stages=2"],
        "the recipe with the trunk's stem and first two stages frozen (detect.frozen_stages=2)",
    ),
    # the larger trunk the frozen stages pay for: Lite2 with them frozen costs a CPU step
    # about what Lite0 unfrozen does (0.97 s against 1.0-1.2 s at batch 8, 256 px)
    "lite2_frozen_stages_2": (
        ["model.backbone=tf_efficientnet_lite2", "detect.frozen_stages=2"],
        "the recipe on EfficientNet-Lite2 with its stem and first two stages frozen",
    ),
    # ATSS (adaptive training sample selection) in place of torchvision's centre rule:
    # each box's locations by its own IoU bar over its nearest candidates on every level
    "atss": (["detect.assign=atss"], "the recipe with the ATSS assignment (detect.assign=atss)"),
    # the third architecture: torchvision's two-stage detector on the same trunk,
    # pyramid and schedule (its proposals, RoIAlign and per-class boxes in the ONNX graph)
    "faster_rcnn": (
        ["detect.arch=faster_rcnn"],
        "the recipe under Faster R-CNN (detect.arch=faster_rcnn) in place of FCOS",
    ),
    # the recipe's graph after one epoch: its speed on this CPU, not its accuracy
    "one_epoch": (["train.epochs=1"], "FCOS, Lite0 + FPN, 256 px, 1 epoch (speed only)"),
}


# rows that train nothing: another run's bundle with some of its rules changed, evaluated on
# the same test images. name: (the run, bundle.json changes, what it is)
EVALUATED = {
    "tta_flips": (
        "default",
        {"tta": "flips"},
        "the default's weights and box thresholds; each image seen as its four flips, their "
        "boxes pooled (eval.tta=flips)",
    ),
}


# rows that train nothing: another run's weights, its box thresholds chosen again on its
# own validation images by `defectkit calibrate` with other rules. name: (the run,
# calibrate settings, what it is)
CALIBRATED = {
    "default_p70": (
        "default",
        ["detect.box_rule=precision", "detect.box_target=0.7"],
        "the default's weights; each class's box threshold the most validation recall at "
        "box precision >= 0.7 (the issue's target) instead of the best F1",
    ),
    "frozen_stages_2_tta": (
        "frozen_stages_2",
        ["eval.tta=flips"],
        "frozen_stages_2's weights; each image seen as its four flips, their boxes pooled "
        "before NMS (eval.tta=flips), the box thresholds chosen again on those boxes",
    ),
    "frozen_stages_2_wbf": (
        "frozen_stages_2",
        ["eval.tta=flips", "detect.tta_merge=wbf"],
        "frozen_stages_2's weights; the four flips' boxes fused: each kept box the "
        "score-weighted mean of every view's best overlapping box, scored their sum over "
        "the views (detect.tta_merge=wbf), the box thresholds chosen again",
    ),
}


# batch-1 p50 ms through the Inspector, under the keys PROTOCOLS.md names
SPEED_KEYS = {"torch": "cpu_ms_per_image", "onnx": "onnx_ms_per_image"}


def speed(run_dir, images: int = 60) -> dict:
    """Batch-1 latency through the Inspector, PyTorch and ONNX Runtime (exported first)."""
    import json

    from defectkit.runs import peak_rss_mb
    from defectkit.runtime.export import check_export, export_onnx
    from defectkit.runtime.inspector import Inspector

    split = json.loads((run_dir / "split.json").read_text())
    root = SHARED_DATA / "neu-det"
    test = [root / p for p in split["test"]][:images]
    export_onnx(run_dir)
    check = check_export(run_dir, test)
    out = {
        "onnx_check_passed": check["passed"],
        "onnx_max_score_difference": check["max_score_difference"],
    }
    for backend in ("torch", "onnx"):
        inspector = Inspector(run_dir, backend, threads=2)
        list(inspector.predict(test[:2], 1))  # warm up
        times = []
        for path in test:
            tick = time.perf_counter()
            list(inspector.predict([path], 1))
            times.append(1000 * (time.perf_counter() - tick))
        out[SPEED_KEYS[backend]] = float(np.percentile(times, 50))
    out["inference_peak_rss_mb"] = peak_rss_mb()
    return out


def protocol_keys(scored: dict) -> dict:
    """A run's metrics.json or an evaluation's result under PROTOCOLS.md's keys."""
    return {
        "map50": scored["map_50"],
        "map50_95": scored["map"],
        "ap50_per_class": scored["ap_50"],
        "precision": scored["box_precision"],
        "recall": scored["box_recall"],
    }


def evaluated_row(name: str, root) -> dict:
    """An EVALUATED row: its run's bundle copied with the changed rules, scored on the run's
    test images through the Inspector (`defectkit eval`), timed as a trained run is."""
    import json
    import shutil

    from defectkit.runtime.evaluate import evaluate_bundle

    source, changes, what = EVALUATED[name]
    source_dir, run_dir = RUNS / f"neudet-detect-{source}", RUNS / f"neudet-detect-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    shutil.copy(source_dir / "split.json", run_dir / "split.json")
    shutil.copytree(
        source_dir / "bundle", run_dir / "bundle", ignore=shutil.ignore_patterns("*.onnx")
    )
    meta_file = run_dir / "bundle" / "bundle.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), **changes}, indent=1))
    result = evaluate_bundle(run_dir, root, split_manifest=run_dir / "split.json")
    trained = json.loads((source_dir / "metrics.json").read_text())
    trained["images"] = split_counts(run_dir)
    command = f"python benchmarks/neudet_detect.py --runs {name}"
    note = f"{what}; evaluated, not trained: its training is run {source}'s"
    return {**detect_row(name, trained, command, note), **protocol_keys(result), **speed(run_dir)}


def main() -> None:
    others = {k: v[1:] for k, v in (EVALUATED | CALIBRATED).items()}
    args = parse_run_args(__doc__, RUNS_DEFINED | others)
    root = SHARED_DATA / "neu-det"
    runs = []
    for name in args.runs.split(","):
        if name in EVALUATED:
            runs.append(evaluated_row(name, root))
            continue
        metrics, command, note = row_run(
            "neudet-detect", "neudet_detect", name, RUNS_DEFINED, CALIBRATED, root, args.reuse
        )
        runs.append(
            {
                **detect_row(name, metrics, command, note),
                **protocol_keys(metrics),
                **speed(RUNS / f"neudet-detect-{name}"),
            }
        )
    save_results("neudet-detect", runs, "python benchmarks/neudet_detect.py --runs " + args.runs)


if __name__ == "__main__":
    main()
