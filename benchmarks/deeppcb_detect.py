"""DeepPCB detection protocol (PROTOCOLS.md): the official trainval / test lists, the six
defect types; mAP@0.5 and mAP@0.5:0.95 (pycocotools), AP per type, box recall and precision
at the dataset's IoU 0.33, with the template paired (6 channels) and with the tested image
alone. Boards are 640 px with defects of a few pixels: on this CPU the runs train on 320 px
windows at full resolution (data.resize=tile) and inspect by sliding windows.

    python benchmarks/deeppcb_detect.py [--runs paired,single] [--epochs 10] [--reuse]
"""

from __future__ import annotations

import argparse
import json

from common import HERE, SHARED_DATA, save_results, train_or_reuse, trained_on

RUNS_DEFINED = {
    "paired": ["detect.reference=true"],
    "single": ["detect.reference=false"],
}
# PROTOCOLS.md keys of a run; the paired run is the shipped recipe's: it is written as
# `default`, with the single run's map50 beside its own (map50_paired, map50_single)
KEYS = {
    "map_50": "map50",
    "map": "map50_95",
    "ap_50": "ap50_per_class",
    "box_recall": "recall",
    "box_precision": "precision",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", default="paired,single")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    root = SHARED_DATA / "deeppcb"
    runs = []
    for name in args.runs.split(","):
        overrides = [
            f"data.root={root}",
            "data.resize=tile",
            "data.image_size=320",
            f"train.epochs={args.epochs}",
            *RUNS_DEFINED[name],
        ]
        metrics, command = train_or_reuse(
            f"deeppcb-detect-{name}", "deeppcb_detect", overrides, args.reuse
        )
        runs.append(
            {
                "name": "default" if name == "paired" else name,
                "command": command,
                "trained_on": trained_on(metrics),
                "epochs": metrics["epochs_run"],
                **{new: metrics[old] for old, new in KEYS.items()},
                "train_seconds": metrics["train_seconds"],
                "ms_per_image": metrics["ms_per_image"],
                "peak_rss_mb": metrics["peak_rss_mb"],
                "images": metrics["images"],
                "box_rule": metrics.get("box_rule"),
                "box_thresholds": metrics.get("box_thresholds"),
            }
        )
    by_name = {r["name"]: r for r in runs}
    if "default" in by_name:
        paired = by_name["default"]
        paired["map50_paired"] = paired.pop("map50")
        paired["map50_95_paired"] = paired.pop("map50_95")
        if "single" in by_name:
            paired["map50_single"] = by_name["single"]["map50"]
        else:  # the single row already in the results file, measured on its own date
            path = HERE / "results" / "deeppcb-detect.json"
            old = json.loads(path.read_text())["runs"] if path.exists() else []
            single = next((r for r in old if r["name"] == "single"), None)
            if single is not None:
                paired["map50_single"] = single["map50"]
                paired["map50_single_from"] = f"the single row of {single['date']}"
    save_results(
        "deeppcb-detect",
        runs,
        f"python benchmarks/deeppcb_detect.py --runs {args.runs} --epochs {args.epochs}",
    )


if __name__ == "__main__":
    main()
