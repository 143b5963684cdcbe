"""Inference speed (PROTOCOLS.md `inference-speed`): PyTorch eager vs ONNX Runtime, batch 1
and batch 16, for the default classify model (NEU-6) and the default anomaly model
(PatchCore on magnetic tile), on real test images of their runs.

    python benchmarks/inference_speed.py [--models neu6,mt_patchcore]

Each model is exported to ONNX and checked against PyTorch on 64 real test images first.
Times are end to end through `Inspector.predict_images`: preprocessing of decoded images,
the model, and decisions (anomaly: maps resized to each image and regions found); image
decoding is left out. The benchmark trains a model only if its run folder is missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import RUNS, SHARED_DATA, save_results, train_or_reuse

MODELS = {
    # name: (run folder, recipe, overrides, what it is)
    "neu6": ("neu6-default", "neu_classify", [], "classify: EfficientNet-Lite0, 128 px, 6 classes"),
    "mt_patchcore": (
        "mt-anomaly-patchcore",
        "mt_anomaly",
        [f"data.root={SHARED_DATA / 'magnetic-tile'}", "anomaly.method=patchcore"],
        "anomaly: PatchCore, EfficientNet-Lite0 stages 2+3, 224 px",
    ),
}


def test_images(run_dir: Path) -> list[Path]:
    split = json.loads((run_dir / "split.json").read_text())
    if "root" in split:  # classify split: names relative to the dataset root
        return [Path(split["root"]) / name for name in split["test"]]
    return [Path(p) for p in split["test"]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_backend(inspector, images, names, repeats_1: int, repeats_16: int) -> dict:
    for i in range(5):  # warm-up
        inspector.predict_images(images[i : i + 1], names[i : i + 1])
    single = []
    for i in range(repeats_1):
        j = i % len(images)
        tick = time.perf_counter()
        inspector.predict_images(images[j : j + 1], names[j : j + 1])
        single.append(1000 * (time.perf_counter() - tick))
    batches = []
    for i in range(repeats_16):
        j = (16 * i) % (len(images) - 16)
        tick = time.perf_counter()
        inspector.predict_images(images[j : j + 16], names[j : j + 16])
        batches.append(time.perf_counter() - tick)
    return {
        "batch1_ms_p50": statistics.median(single),
        "batch1_ms_p95": percentile(single, 0.95),
        "batch16_images_per_second": 16 * len(batches) / sum(batches),
        "batch16_ms_p50": 1000 * statistics.median(batches),
        "repeats": {"batch1": repeats_1, "batch16": repeats_16},
    }


def main() -> None:
    from defectkit.data.images import load_image
    from defectkit.runtime.export import check_export, export_onnx
    from defectkit.runtime.inspector import Inspector

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    runs = []
    for name in args.models.split(","):
        folder, recipe, overrides, _ = MODELS[name]
        train_or_reuse(folder, recipe, overrides, reuse=True)
        bundle = RUNS / folder / "bundle"
        record = export_onnx(bundle)
        paths = test_images(RUNS / folder)
        # every 5th test image: all classes (and, for the anomaly model, good and defect)
        sample = paths[:: max(1, len(paths) // 64)][:64]
        check = check_export(bundle, sample)
        print(f"{name}: export {record['export_seconds']} s, check {check}", flush=True)
        images = [load_image(p) for p in sample]
        names = [str(p) for p in sample]
        heavy = name != "neu6"
        for backend in ("torch", "onnx"):
            inspector = Inspector(bundle, backend)
            timing = time_backend(
                inspector, images, names, 40 if heavy else 200, 4 if heavy else 12
            )
            print(f"  {backend}: {timing}", flush=True)
            runs.append(
                {
                    "name": f"{name}-{backend}",
                    "model": name,
                    "backend": backend,
                    **timing,
                    "onnx_check": {
                        k: check[k] for k in ("images", "max_score_difference", "passed")
                    },
                    "onnx_mb": (bundle / "model.onnx").stat().st_size / 2**20,
                }
            )
    command = "python benchmarks/inference_speed.py --models " + args.models
    save_results("inference-speed", runs, command)


if __name__ == "__main__":
    main()
