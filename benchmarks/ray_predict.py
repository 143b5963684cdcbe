"""Batch inspection on Ray against the local engine, on the same cores (protocol `ray-predict`,
proposed here): the NEU-6 default bundle over its test images, repeated to `--images`,
through `defectkit predict` (one process, batches of 16) and through `--engine ray` (a local
Ray instance limited to the same cores, one Inspector actor per core, batches of 16).
Reports images/s of each and their ratio (what Ray's scheduling, serialisation and
per-actor model costs on one machine), Ray's start-up apart, and checks that both give the
same calls.

    python benchmarks/ray_predict.py [--images 2000] [--cpus 2]

On a real cluster the same command spreads over every node:
    defectkit predict BUNDLE s3://bucket/images/ --engine ray --address auto \\
        --actors 64 --cpus-per-actor 4 --out results/   # Parquet files written by the cluster
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from common import RUNS, save_results
from inference_speed import test_images

BUNDLE = RUNS / "neu6-default" / "bundle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    import ray
    import torch

    from defectkit.predictions import PredictionWriter
    from defectkit.runtime.cluster import predict_with_ray
    from defectkit.runtime.inspector import Inspector

    base = test_images(RUNS / "neu6-default")
    paths = [base[i % len(base)] for i in range(args.images)]
    out = Path(tempfile.mkdtemp(prefix="ray-predict-"))

    torch.set_num_threads(args.cpus)
    inspector = Inspector(BUNDLE)
    tick = time.perf_counter()
    with PredictionWriter(out / "local.csv", inspector.score_names()) as writer:
        for prediction in inspector.predict(paths, 16):
            writer.write(prediction)
    local_seconds = time.perf_counter() - tick

    tick = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    start_seconds = time.perf_counter() - tick
    ray_runs = []
    for _ in range(2):  # the second run: the machine warm, actors started afresh as always
        tick = time.perf_counter()
        predict_with_ray(BUNDLE, paths, out / "ray.csv", actors=args.cpus, batch_size=16)
        ray_runs.append(time.perf_counter() - tick)
    ray.shutdown()
    ray_seconds = min(ray_runs)

    rows = [list(csv.DictReader((out / f"{n}.csv").open())) for n in ("local", "ray")]
    same_calls = sum(a["label"] == b["label"] for a, b in zip(*rows, strict=True))
    run = {
        "name": "default",
        "images": len(paths),
        "cpus": args.cpus,
        "local_images_per_second": len(paths) / local_seconds,
        "ray_images_per_second": len(paths) / ray_seconds,
        "ray_over_local_time": ray_seconds / local_seconds,
        "ray_start_seconds": start_seconds,
        "ray_run_seconds": ray_runs,
        "same_calls": same_calls / len(paths),
    }
    print(run, flush=True)
    save_results(
        "ray-predict",
        [run],
        f"python benchmarks/ray_predict.py --images {args.images} --cpus {args.cpus}",
    )


if __name__ == "__main__":
    main()
