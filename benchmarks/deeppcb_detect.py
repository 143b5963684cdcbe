"""DeepPCB detection protocol (PROTOCOLS.md): the official trainval / test lists, the six
defect types; mAP@0.5 and mAP@0.5:0.95 (pycocotools), AP per type, box recall and precision
at the dataset's IoU 0.33, with the template paired (6 channels) and with the tested image
alone. The recipe (deeppcb_detect) trains on 320 px windows at full resolution and inspects
whole boards by sliding windows, on this CPU.

    python benchmarks/deeppcb_detect.py [--runs default,mean_start,single,grouped_val,...] [--reuse]
    python benchmarks/deeppcb_detect.py --runs default_p70,default_tta,grouped_val_p70  # calibrated

A calibrated row trains nothing: a copy of a trained run's folder whose box thresholds are
chosen again on its own validation images by `defectkit calibrate`.
"""

from __future__ import annotations

import json

from common import (
    HERE,
    SHARED_DATA,
    detect_row,
    parse_run_args,
    row_run,
    save_results,
)

RUNS_DEFINED = {
    # name: (overrides, what it is)
    "default": ([], "the recipe: image + template, the first convolution on their difference"),
    "mean_start": (
        ["detect.reference_start=mean"],
        "the recipe with the first convolution starting as the mean of image and template",
    ),
    "single": (["detect.reference=false"], "the recipe on the tested image alone"),
    # NEU-DET's gain from keeping the stem and first two stages as loaded (the 6-channel
    # stem then keeps its difference start: the image's filters plus those on image -
    # template), and a CPU step about a third shorter
    "frozen_stages_2": (
        ["detect.frozen_stages=2"],
        "the recipe with the trunk's stem and first two stages frozen (detect.frozen_stages=2)",
    ),
    # ATSS in place of torchvision's centre rule (NEU-DET: benchmarks/RESULTS.md row atss):
    # each box's locations by its own IoU bar, where DeepPCB's few-pixel defects get few
    "atss": (["detect.assign=atss"], "the recipe with the ATSS assignment (detect.assign=atss)"),
    # the two-stage detector: proposals, then RoIAlign of each from the paired maps
    "faster_rcnn": (
        ["detect.arch=faster_rcnn"],
        "the recipe under Faster R-CNN (detect.arch=faster_rcnn) in place of FCOS",
    ),
    "grouped_val": (
        ["split.group_by=folder"],
        "the recipe with a whole board group held out as validation (group 44000, 50 of the "
        "311 trainval images; the test list has two groups no trainval image comes from): "
        "the epoch and the box thresholds chosen on boards of an unseen design",
    ),
}
# rows that train nothing: another run's weights, its box thresholds chosen again on its own
# validation images. name: (the run, calibrate settings, what it is)
PRECISION_70 = ["detect.box_rule=precision", "detect.box_target=0.7"]
CALIBRATED = {
    "default_p70": (
        "default",
        PRECISION_70,
        "the default's weights; each class's box threshold the most validation recall at "
        "box precision >= 0.7 (the issue's target) instead of the best F1",
    ),
    "default_tta": (
        "default",
        ["eval.tta=flips"],
        "the default's weights; every window seen as its four flips, their boxes pooled before "
        "NMS (eval.tta=flips), the box thresholds chosen again on those boxes",
    ),
    "grouped_val_p70": (
        "grouped_val",
        PRECISION_70,
        "grouped_val's weights; each class's box threshold the most recall at box precision "
        ">= 0.7 on the held-out board group",
    ),
}
# PROTOCOLS.md keys of a run; the paired recipe's run is `default`, with the single run's
# map50 beside its own (map50_paired, map50_single)
KEYS = {
    "map_50": "map50",
    "map": "map50_95",
    "ap_50": "ap50_per_class",
    "box_recall": "recall",
    "box_precision": "precision",
}


def main() -> None:
    args = parse_run_args(__doc__, RUNS_DEFINED | {k: v[1:] for k, v in CALIBRATED.items()})
    root = SHARED_DATA / "deeppcb"
    runs = []
    for name in args.runs.split(","):
        metrics, command, note = row_run(
            "deeppcb-detect", "deeppcb_detect", name, RUNS_DEFINED, CALIBRATED, root, args.reuse
        )
        runs.append(
            {
                **detect_row(name, metrics, command, note),
                **{new: metrics[old] for old, new in KEYS.items()},
                "ms_per_image": metrics["ms_per_image"],
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
        f"python benchmarks/deeppcb_detect.py --runs {args.runs}",
    )


if __name__ == "__main__":
    main()
