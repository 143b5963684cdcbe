"""A new dataset without a recipe (protocol `no-recipe`, proposed here): each dataset trained
with `defectkit train --task T --data PATH` alone, every other setting drawn from the data
and this machine, side by side with what its tuned recipe reached (from that protocol's
results file, same machine unless marked GPU): the gap the recipe buys, and its time.

    python benchmarks/no_recipe.py [--runs neu6_classify,mt_anomaly,mt_classify,deeppcb_segment]

mt_segment is left out of the default list: the 10 epochs of 256 px it draws take ~35 min here.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time

from common import HERE, REPO, RUNS, SHARED_DATA, save_results

# name: (task, data, headline key, time key, (protocol, run name, what) of the tuned recipe)
RUNS_SPEC = {
    "neu6_classify": (
        "classify",
        "neu-det/IMAGES",
        "accuracy",
        "train_seconds",
        ("neu6-classify", "default", "test_accuracy", "recipe neu_classify, 128 px, 8 epochs"),
    ),
    "mt_anomaly": (
        "anomaly",
        "magnetic-tile",
        "image_auroc",
        "fit_seconds",
        ("mt-anomaly", "default", "image_auroc", "recipe mt_anomaly, PatchCore + PaDiM, pad"),
    ),
    "mt_classify": ("classify", "magnetic-tile", "accuracy", "train_seconds", None),
    "deeppcb_segment": (
        "segment",
        "deeppcb",
        "defect_iou",
        "train_seconds",
        (
            "deeppcb-paired",
            "paired_256_cpu",
            "defect_iou",
            "recipe deeppcb_segment at 256 px, 10 epochs, CPU",
        ),
    ),
    "mt_segment": (
        "segment",
        "magnetic-tile",
        "defect_iou",
        "train_seconds",
        ("mt-segment", "cpu_10epochs", "defect_iou", "recipe mt_segment, 224 px, 10 epochs, CPU"),
    ),
}
DEFAULT_RUNS = "neu6_classify,mt_anomaly,mt_classify,deeppcb_segment"


def recipe_number(spec) -> tuple[float | None, float | None, str]:
    if spec is None:
        return None, None, "no recipe for this dataset"
    protocol, name, key, what = spec
    path = HERE / "results" / f"{protocol}.json"
    runs = {r["name"]: r for r in json.loads(path.read_text())["runs"]}
    run = runs[name]
    seconds = run.get("train_seconds", run.get("fit_seconds"))
    return run[key], seconds, what


def run(name: str) -> dict:
    task, data, key, time_key, recipe = RUNS_SPEC[name]
    out = RUNS / f"no-recipe-{name}"
    if out.exists():
        shutil.rmtree(out)
    args = [
        "defectkit",
        "train",
        *("--task", task, "--data", str(SHARED_DATA / data)),
        *("--set", f"out_dir={RUNS}", "--set", f"name=no-recipe-{name}"),
    ]
    print(f"\n== {name}: {shlex.join(args)}", flush=True)
    tick = time.perf_counter()
    subprocess.run([sys.executable, "-m", "defectkit.cli", *args[1:]], check=True, cwd=REPO)
    metrics = json.loads((out / "metrics.json").read_text())
    recipe_value, recipe_seconds, recipe_what = recipe_number(recipe)
    return {
        "name": name,
        "task": task,
        "data": data,
        "metric": key,
        "value": metrics[key],
        "interval": metrics.get("intervals", {}).get(key),
        "seconds": metrics.get(time_key),
        "wall_seconds": time.perf_counter() - tick,
        "recipe_value": recipe_value,
        "recipe_seconds": recipe_seconds,
        "recipe": recipe_what,
        "drawn": drawn(out),
        "command": shlex.join(args),
    }


def drawn(run_dir) -> dict[str, str]:
    """What the run drew from the data that matters most for time and accuracy."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    picked = {
        "image_size": config["data"]["image_size"],
        "resize": config["data"]["resize"],
    }
    if config["task"] != "anomaly":
        picked.update(epochs=config["train"]["epochs"], strategy=config["train"]["strategy"])
    else:
        picked["method"] = config["anomaly"]["method"]
    return {k: str(v) for k, v in picked.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", default=DEFAULT_RUNS)
    args = parser.parse_args()
    results = []
    for name in args.runs.split(","):
        result = run(name)
        print(result, flush=True)
        results.append(result)
    save_results("no-recipe", results, f"python benchmarks/no_recipe.py --runs {args.runs}")


if __name__ == "__main__":
    main()
