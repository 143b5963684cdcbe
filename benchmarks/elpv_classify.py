"""ELPV protocol (PROTOCOLS.md): OK/NG and 4-class on the solar-cell images of the
`elpv-dataset` pip package, split stratified by label and cell type (seed 0, 75% train).
A run trains elpv_classify (OK/NG) and elpv_4class with its overrides, or only the one its
definition names.

    python benchmarks/elpv_classify.py [--runs default,lite1,lite2,ordinal,tta,ordinal_tta]
        [--reuse]
"""

from __future__ import annotations

from common import parse_run_args, save_results, table, train_or_reuse, write_section

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
    }


def _number(value: float | None, form: str) -> str:
    return "n/a" if value is None else format(value, form)


def main() -> None:
    args = parse_run_args(__doc__, RUNS_DEFINED)
    runs = [run_row(name, args.reuse) for name in args.runs.split(",")]
    payload = save_results(
        "elpv-classify", runs, "python benchmarks/elpv_classify.py --runs " + args.runs
    )
    rows = [
        [
            r["name"],
            RUNS_DEFINED[r["name"]][1],
            _number(r["auc"], ".4f"),
            _number(r["accuracy"], ".4f")
            + (f" ({r['threshold_rule']} {r['threshold']:.3f})" if r["threshold_rule"] else ""),
            _number(r["ng_f1"], ".4f"),
            _number(r["ng_recall_at_95_specificity"], ".4f"),
            _number(r["accuracy_4class"], ".4f"),
            _number(r.get("balanced_accuracy_4class"), ".4f"),
            _number(r["train_seconds_binary"], ".0f")
            + " / "
            + _number(r["train_seconds_4class"], ".0f"),
            f"{r['peak_rss_mb']:.0f}",
            _number(r.get("images_per_second"), ".0f"),
        ]
        for r in payload["runs"]
    ]
    header = [
        "run",
        "what",
        "ROC AUC (OK/NG)",
        "accuracy (threshold)",
        "F1 of NG",
        "NG recall at 95% OK spec.",
        "4-class accuracy",
        "4-class balanced acc.",
        "train s (OK/NG / 4-class)",
        "peak MB",
        "images/s",
    ]
    write_section(
        "elpv-classify",
        f"""## ELPV solar cells (PROTOCOLS.md)

Machine: {payload["machine"]}. Date: {payload["date"]}. Command: `{payload["command"]}`
(each run's own `defectkit train` commands are in `results/elpv-classify.json`).
Fine-tuned at 160 px, 8 epochs (OK/NG: class-weighted loss; 4-class: unweighted, label
smoothing 0.1, recipes elpv_classify / elpv_4class); a run changes only what its row says.
The OK/NG threshold is chosen on the validation images (10% of train, Youden) and applied to
the test images; the 95%-specificity point is read off the test ROC. images/s: batch-32
inference on the test split (the OK/NG model; the 4-class one for a 4-class-only run). The
dataset paper's CNN: 0.884 4-class accuracy.

{table(rows, header)}""",
    )


if __name__ == "__main__":
    main()
