"""DeepPCB paired segmentation (PROTOCOLS.md): the tested image alone vs the tested image
and its aligned template stacked as input channels, on the official lists; defect IoU and
box recall / precision at IoU >= 0.33 from connected regions; each model's speed and memory
on this machine's CPU (benchmarks/segment_speed.py).

    python benchmarks/deeppcb_paired.py [--runs single,paired,...] [--reuse]

Runs marked GPU were trained on an H100 (the device tool) with the printed command, their
run folders copied back and read here with --reuse.
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

ALONE, PAIRED = "image alone (3 ch)", "image + template (6 ch)"
WHOLE_640 = ["data.resize=squash", "data.image_size=640", "train.epochs=30"]
WHOLE_256 = ["data.resize=squash", "data.image_size=256", "train.epochs=10"]
RUNS_DEFINED = {
    # name: (overrides of the deeppcb_segment recipe, input, what the network sees)
    "paired": ([], PAIRED, "320 px windows of the 640 px board"),
    "single": (["segment.reference=false"], ALONE, "320 px windows of the 640 px board"),
    "paired_30epochs": (["train.epochs=30"], PAIRED, "320 px windows of the 640 px board"),
    "paired_640": (WHOLE_640, PAIRED, "the whole board at 640 px"),
    "single_640": ([*WHOLE_640, "segment.reference=false"], ALONE, "the whole board at 640 px"),
    "paired_256_cpu": (WHOLE_256, PAIRED, "the whole board resized to 256 px"),
    "single_256_cpu": (
        [*WHOLE_256, "segment.reference=false"],
        ALONE,
        "the whole board resized to 256 px",
    ),
}


def main() -> None:
    args = parse_run_args(__doc__, RUNS_DEFINED)
    root = SHARED_DATA / "deeppcb"
    runs = []
    for name in args.runs.split(","):
        overrides = [f"data.root={root}", *RUNS_DEFINED[name][0]]
        metrics, command = train_or_reuse(
            f"deeppcb-{name}", "deeppcb_segment", overrides, args.reuse
        )
        speed = cpu_speed(RUNS / f"deeppcb-{name}", root)
        runs.append(
            {
                "name": name,
                "command": command,
                "images": metrics["images"],
                "trained_on": trained_on(metrics),
                "epochs": metrics["epochs_run"],
                "cpu_ms_per_image": speed["ms_per_image_p50"],
                "cpu_peak_rss_mb": speed["peak_rss_mb"],
                "cpu_speed": speed,
                "defect_iou": metrics["defect_iou"],
                "dice": metrics["dice"],
                "box_recall": metrics["region_recall"],
                "box_precision": metrics["region_precision"],
                "regions": metrics["regions"],
                "train_peak_rss_mb": metrics["peak_rss_mb"],
                "train_seconds": metrics["train_seconds"],
            }
        )
    save_results("deeppcb-paired", runs, "python benchmarks/deeppcb_paired.py --runs " + args.runs)


if __name__ == "__main__":
    main()
