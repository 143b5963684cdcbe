"""README command 1, measured: `defectkit demo` (ELPV OK/NG, EfficientNet-Lite0, 128 px) in
a fresh process, its run's ROC AUC and accuracy at the validation-chosen threshold (the
bundle's), its training seconds and the whole command's wall time. The README's sentence on
the demo is generated from results/demo.json (tables.py).

    python benchmarks/demo.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

from common import REPO, RUNS, save_results, split_counts


def main() -> None:
    out = RUNS / "demo"
    if out.exists():
        shutil.rmtree(out)
    tick = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "defectkit.cli", "demo", "--out", str(out)], check=True, cwd=REPO
    )
    wall = time.perf_counter() - tick
    (run_dir,) = [p for p in out.iterdir() if (p / "metrics.json").is_file()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    binary = metrics["binary"]
    save_results(
        "demo",
        [
            {
                "name": "default",
                "auc": binary["auc"],
                "accuracy": binary["at_threshold"]["accuracy"],
                "threshold": binary["threshold"],
                "train_seconds": metrics["train_seconds"],
                "wall_seconds": wall,
                "images": split_counts(run_dir),
            }
        ],
        "defectkit demo",
    )


if __name__ == "__main__":
    main()
