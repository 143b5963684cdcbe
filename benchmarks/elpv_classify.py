"""ELPV protocol (PROTOCOLS.md): OK/NG and 4-class on the solar-cell images of the
`elpv-dataset` pip package, split stratified by label and cell type (seed 0, 75% train).
A run trains elpv_classify (OK/NG) and elpv_4class with its overrides, or only the one its
definition names.

    python benchmarks/elpv_classify.py [--runs default,lite1,lite2,ordinal,tta,ordinal_tta]
        [--reuse]
"""

from __future__ import annotations

from common import parse_run_args, save_results, train_or_reuse

BOTH = ("binary", "4class")
RECIPES = {"binary": "elpv_classify", "4class": "elpv_4class"}

RUNS_DEFINED = {
    # name: (overrides of the recipes, what it is, the recipes it trains)
    "default": ([], "EfficientNet-Lite0, fine-tune, 160 px, 8 epochs", BOTH),
    "lite1": (["model.backbone=tf_efficientnet_lite1"], "EfficientNet-Lite1, same recipes", BOTH),
    "lite2": (["model.backbone=tf_efficientnet_lite2"], "EfficientNet-Lite2, same recipes", BOTH),
    "ordinal": (
        ["train.loss=ordinal"],
        "4-class only: ordinal loss (cross-entropy + squared earth mover's distance over the "
        "grades), otherwise the default",
        ("4class",),
    ),
    "tta": (
        ["eval.tta=flips"],
        "the default, tested and shipped with test-time augmentation: class probabilities "
        "averaged over the 4 flips of each cell",
        BOTH,
    ),
    "ordinal_tta": (
        ["train.loss=ordinal", "eval.tta=flips"],
        "4-class only: the ordinal loss with the 4 flips' test-time augmentation",
        ("4class",),
    ),
}


def run_row(name: str, reuse: bool) -> dict:
    """One run's trainings (OK/NG and / or 4-class) as its row of results/elpv-classify.json;
    the keys of a recipe it does not train are None."""
    overrides, _, parts = RUNS_DEFINED[name]
    prefix = "elpv" if name == "default" else f"elpv-{name}"
    trained = {
        part: train_or_reuse(f"{prefix}-{part}", RECIPES[part], overrides, reuse) for part in parts
    }
    binary, four = trained.get("binary", ({}, ""))[0], trained.get("4class", ({}, ""))[0]
    b = binary.get("binary", {})
    return {
        "name": name,
        "command": " && ".join(command for _, command in trained.values()),
        "auc": b.get("auc"),
        "accuracy": b.get("at_threshold", {}).get("accuracy"),
        "ng_f1": b.get("at_threshold", {}).get("ng_f1"),
        "ng_recall_at_95_specificity": b.get("at_95_specificity", {}).get("ng_recall"),
        "accuracy_4class": four.get("accuracy"),
        "balanced_accuracy_4class": four.get("balanced_accuracy"),
        "threshold_rule": b.get("threshold_rule"),
        "threshold": b.get("threshold"),
        "train_seconds_binary": binary.get("train_seconds"),
        "train_seconds_4class": four.get("train_seconds"),
        "images_per_second": (binary or four).get("images_per_second"),
        "peak_rss_mb": max(m["peak_rss_mb"] for m, _ in trained.values()),
        # the binary run's split (the 4-class run splits the same images by their grade)
        "images": (binary or four).get("images"),
    }


def main() -> None:
    args = parse_run_args(__doc__, RUNS_DEFINED)
    runs = [run_row(name, args.reuse) for name in args.runs.split(",")]
    save_results("elpv-classify", runs, "python benchmarks/elpv_classify.py --runs " + args.runs)


if __name__ == "__main__":
    main()
