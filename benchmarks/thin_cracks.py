"""Thin, long defects (synthetic, no data needed): FCOS trained with each training
assignment (detect.assign line, atss, centre), and Faster R-CNN (detect.arch=faster_rcnn,
its anchors 1:2 to 2:1, its box head regressing each proposal), on the same 96 tall strips
of 4 px cracks,
1:9 to 1:30 (data.synthetic.make_crack_set, seed 0), at full resolution padded to 128 px,
for 30 epochs: the settings of the slow test tests/test_detect_thin.py. mAP@0.5, box recall
and precision at IoU 0.5 on the test strips at the bundle's own box thresholds. One seed:
a small, noisy measurement (the line rule ranged 0.09 to 0.83 at 20 epochs over drawings).

    python benchmarks/thin_cracks.py [--runs line,atss,centre,faster_rcnn]
"""

from __future__ import annotations

import json
import subprocess
import sys

from common import REPO, RUNS, detect_row, parse_run_args, save_results, split_counts

from defectkit.data.synthetic import make_crack_set

RUNS_DEFINED = {
    # name: (overrides, what it is)
    "line": (["detect.assign=line"], "the line rule (what detect.assign=auto picks here)"),
    "atss": (["detect.assign=atss"], "adaptive training sample selection"),
    "centre": (["detect.assign=centre"], "torchvision's centre rule"),
    "faster_rcnn": (
        ["detect.arch=faster_rcnn"],
        "Faster R-CNN: proposals from anchors of 1:2 to 2:1, each regressed by the box head",
    ),
}
SETTINGS = [
    "task=detect",
    "data.image_size=128",
    "data.resize=pad",
    "train.epochs=30",
    "train.batch_size=8",
    "train.lr=0.002",
    "train.head_lr_mult=1",
    "train.warmup_epochs=2",
    "train.threads=2",
]


def main() -> None:
    args = parse_run_args(__doc__, RUNS_DEFINED)
    root = make_crack_set(RUNS / "thin-cracks-data", count=96)
    runs = []
    for name in args.runs.split(","):
        overrides, what = RUNS_DEFINED[name]
        run_dir = RUNS / f"thin-cracks-{name}"
        sets = [*SETTINGS, *overrides, f"data.root={root}", f"out_dir={RUNS}"]
        sets.append(f"name=thin-cracks-{name}")
        if not (args.reuse and (run_dir / "metrics.json").is_file()):
            print(f"\n== {name}: defectkit train {' '.join(sets)}", flush=True)
            cli = [sys.executable, "-m", "defectkit.cli", "train"]
            subprocess.run([*cli, *[a for s in sets for a in ("--set", s)]], check=True, cwd=REPO)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        metrics["images"] = split_counts(run_dir)
        runs.append(
            {
                **detect_row(
                    name, metrics, f"python benchmarks/thin_cracks.py --runs {name}", what
                ),
                "assign": metrics["assign"],
                "map50": metrics["map_50"],
                "map50_95": metrics["map"],
                "recall": metrics["box_recall"],
                "precision": metrics["box_precision"],
            }
        )
    save_results("thin-cracks", runs, "python benchmarks/thin_cracks.py --runs " + args.runs)


if __name__ == "__main__":
    main()
