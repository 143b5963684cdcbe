"""Magnetic tile anomaly protocol (PROTOCOLS.md): fit on defect-free images only, test on the
held-out good images and every defect image.

    python benchmarks/mt_anomaly.py [--runs default,padim,autoencoder]
"""

from __future__ import annotations

from common import (
    ANOMALY_KEYS,
    SHARED_DATA,
    parse_run_args,
    save_results,
    train_or_reuse,
)

RUNS_DEFINED = {
    # name: (overrides, what it is)
    "default": (
        [],
        "PatchCore + PaDiM on one backbone pass (EfficientNet-Lite0 stages 2+3), mean of "
        "their maps in z units, 224 px, aspect kept",
    ),
    "patchcore": (
        ["anomaly.method=patchcore"],
        "PatchCore, EfficientNet-Lite0 stages 2+3, 1% coreset, 224 px, aspect kept",
    ),
    "padim": (["anomaly.method=padim"], "PaDiM, same features, 100 random dims, 224 px"),
    "lite1": (
        ["model.backbone=tf_efficientnet_lite1"],
        "the default (PatchCore + PaDiM) on EfficientNet-Lite1 stages 2+3, 224 px",
    ),
    "lite2": (
        ["model.backbone=tf_efficientnet_lite2"],
        "the default (PatchCore + PaDiM) on EfficientNet-Lite2 stages 2+3, 224 px",
    ),
    "autoencoder": (
        ["anomaly.method=autoencoder", "anomaly.epochs=20"],
        "feature inpainting autoencoder: each patch's features (3x3 averaged) reconstructed "
        "from two rings of patches around it, loss on the hardest 2% of each batch's "
        "patches, 20 epochs, 224 px",
    ),
}


# per defect class: with the good test images / inside its own images, pooled and image by
# image / pooled without the class's images


PER_CLASS = (
    "pixel_auroc",
    "pixel_auroc_within",
    "image_pixel_auroc_median",
    "images_map_inverted",
    "pixel_auroc_without",
)


def main() -> None:
    args = parse_run_args(__doc__, RUNS_DEFINED)
    runs = []
    for name in args.runs.split(","):
        overrides, _ = RUNS_DEFINED[name]
        overrides = [f"data.root={SHARED_DATA / 'magnetic-tile'}", *overrides]
        metrics, command = train_or_reuse(f"mt-anomaly-{name}", "mt_anomaly", overrides, args.reuse)
        runs.append(
            {
                "name": name,
                "command": command,
                "images": metrics["images"],
                "method": metrics["method"],
                **{k: metrics[k] for k in ANOMALY_KEYS},
                "pixel_per_class": {
                    c: {k: v.get(k) for k in PER_CLASS}
                    for c, v in metrics["per_class"].items()
                    if v.get("pixel_auroc") is not None
                },
            }
        )
    save_results("mt-anomaly", runs, "python benchmarks/mt_anomaly.py --runs " + args.runs)


if __name__ == "__main__":
    main()
