"""ELPV protocol (PROTOCOLS.md): OK/NG and 4-class on the solar-cell images of the
`elpv-dataset` pip package, split stratified by label and cell type (seed 0, 75% train).

    python benchmarks/elpv_classify.py
"""

from __future__ import annotations

import argparse
import json

from common import RUNS, save_results, table, train, write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--only",
        choices=("binary", "4class"),
        help="retrain one of the two; the other's last run folder is reused",
    )
    args = parser.parse_args()
    runs = {}
    for name, recipe in (("binary", "elpv_classify"), ("4class", "elpv_4class")):
        folder = RUNS / f"elpv-{name}"
        if args.only and args.only != name and (folder / "metrics.json").is_file():
            runs[name] = (
                json.loads((folder / "metrics.json").read_text()),
                f"defectkit train --config {recipe}",
            )
        else:
            runs[name] = train(f"elpv-{name}", recipe, [])
    (binary, command), (four, command4) = runs["binary"], runs["4class"]
    b = binary["binary"]
    run = {
        "name": "default",
        "command": f"{command} && {command4}",
        "auc": b["auc"],
        "accuracy": b["at_threshold"]["accuracy"],
        "ng_f1": b["at_threshold"]["ng_f1"],
        "ng_recall_at_95_specificity": b["at_95_specificity"]["ng_recall"],
        "accuracy_4class": four["accuracy"],
        "threshold_rule": b["threshold_rule"],
        "threshold": b["threshold"],
        "train_seconds_binary": binary["train_seconds"],
        "train_seconds_4class": four["train_seconds"],
        "peak_rss_mb": max(binary["peak_rss_mb"], four["peak_rss_mb"]),
    }
    payload = save_results("elpv-classify", [run], "python benchmarks/elpv_classify.py")
    r = payload["runs"][-1]
    rows = [
        ["ROC AUC (OK/NG)", f"{r['auc']:.4f}"],
        [
            f"accuracy at the {r['threshold_rule']} threshold ({r['threshold']:.3f})",
            f"{r['accuracy']:.4f}",
        ],
        ["F1 of NG at that threshold", f"{r['ng_f1']:.4f}"],
        ["NG recall at 95% OK specificity", f"{r['ng_recall_at_95_specificity']:.4f}"],
        ["4-class accuracy (paper's CNN: 0.884)", f"{r['accuracy_4class']:.4f}"],
        [
            "training s (binary / 4-class)",
            f"{r['train_seconds_binary']:.0f} / {r['train_seconds_4class']:.0f}",
        ],
        ["peak MB", f"{r['peak_rss_mb']:.0f}"],
    ]
    write_section(
        "elpv-classify",
        f"""## ELPV solar cells (PROTOCOLS.md)

Machine: {payload["machine"]}. Date: {payload["date"]}. Command: `{payload["command"]}`.
EfficientNet-Lite0 fine-tuned at 160 px, 8 epochs (OK/NG: class-weighted loss; 4-class:
unweighted, label smoothing 0.1, recipes elpv_classify / elpv_4class). The OK/NG threshold is
chosen on the validation images (10% of train, Youden) and applied to the test images;
the 95%-specificity point is read off the test ROC.

{table(rows, ["metric", "value"])}""",
    )


if __name__ == "__main__":
    main()
