"""NEU-6 few-shot protocol (PROTOCOLS.md): test accuracy against k training images per class,
5 seeded subsets per k, through `defectkit learning-curve` (the shipped neu_fewshot recipe:
frozen EfficientNet-Lite0 features of every flip and quarter turn, a head started at the
class means). Two comparisons on the same subsets: the same path without the extra views,
and fine-tuning the whole network as neu_classify does.

    python benchmarks/neu6_fewshot.py [--curves fewshot,no_views,finetune]

Runs are kept in benchmarks/runs/neu6-fewshot-<curve>/k<k>-r<r>; a second call reuses the
finished ones (delete the folder to measure again).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys

from common import REPO, RUNS, SHARED_DATA, save_results

ROOT = SHARED_DATA / "neu-det" / "IMAGES"
CURVES = {
    # name: (recipe, overrides, shots, what it shows)
    "fewshot": ("neu_fewshot", [], "1,5,10,20,50", "the shipped few-shot path"),
    "no_views": (
        "neu_fewshot",
        ["train.views=none"],
        "1,5,10",
        "the same without the flips and quarter turns (one feature row per image)",
    ),
    "finetune": (
        "neu_classify",
        ["split.val_fraction=0", "train.epochs=15"],
        "5,10",
        "fine-tune the whole EfficientNet-Lite0 (neu_classify, 128 px, 15 epochs)",
    ),
}
SHIPPED_K = 10  # the neu_fewshot recipe's split.per_class: the run named "default"


def run_curve(name: str) -> tuple[dict, str]:
    recipe, overrides, shots, _ = CURVES[name]
    args = [
        "learning-curve",
        "--config",
        recipe,
        "--shots",
        shots,
        "--repeats",
        "5",
        *[a for o in [f"data.root={ROOT}", *overrides] for a in ("--set", o)],
    ]
    command = shlex.join(["defectkit", *args])
    print(f"\n== {name}: {command}", flush=True)
    out = ["--set", f"out_dir={RUNS}", "--set", f"name=neu6-fewshot-{name}"]
    subprocess.run([sys.executable, "-m", "defectkit.cli", *args, *out], check=True, cwd=REPO)
    return json.loads((RUNS / f"neu6-fewshot-{name}" / "curve.json").read_text()), command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--curves", default=",".join(CURVES))
    chosen = parser.parse_args().curves.split(",")
    results = []
    for name in chosen:
        curve, command = run_curve(name)
        for point in curve["points"]:
            row = {
                "name": f"k{point['k']}" if name == "fewshot" else f"{name}_k{point['k']}",
                "curve": name,
                "command": command,
                "k": point["k"],
                "runs": point["runs"],
                "accuracy_mean": point["accuracy_mean"],
                "accuracy_std": point["accuracy_std"],
                "macro_f1_mean": point["macro_f1_mean"],
                "seconds_mean": point["seconds_mean"],
                "accuracy_per_run": [r["accuracy"] for r in curve["runs"] if r["k"] == point["k"]],
            }
            results.append(row)
            if name == "fewshot" and point["k"] == SHIPPED_K:
                results.append({**row, "name": "default"})
    save_results(
        "neu6-fewshot", results, "python benchmarks/neu6_fewshot.py --curves " + ",".join(chosen)
    )


if __name__ == "__main__":
    main()
