"""Anomaly detection on a real MVTec AD category (or any folder in that layout), wherever
one is given: the layout's own train/test split, 10% of train/good held out to calibrate.

    python benchmarks/mvtec_anomaly.py --root /data/mvtec/bottle [--method patchcore]

MVTec AD is not among ../shared/data, so nothing here runs it by default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import ANOMALY_KEYS, save_results, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, type=Path, help="one MVTec AD category folder")
    parser.add_argument("--method", default="patchcore")
    args = parser.parse_args()
    category = args.root.resolve().name
    name = f"mvtec-{category}-{args.method}"
    metrics, command = train(
        name,
        "mt_anomaly",
        [
            f"data.root={args.root}",
            "data.format=mvtec",
            "anomaly.good_label=good",
            f"anomaly.method={args.method}",
        ],
    )
    keys = ANOMALY_KEYS
    run = {"name": name, "command": command, "images": metrics["images"]}
    run.update({k: metrics[k] for k in keys})
    save_results("mvtec-anomaly", [run], f"python benchmarks/mvtec_anomaly.py --root {args.root}")


if __name__ == "__main__":
    main()
