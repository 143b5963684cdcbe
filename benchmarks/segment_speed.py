"""Inference speed and memory of a segment run's model on this machine's CPU, end to end
through the Inspector (decode, preprocess, network, back to the image's size, mask), one
image at a time, on the run's own test images. Runs trained elsewhere (a GPU) are timed
here; where their weights did not come back, the same architecture untrained is timed
(speed does not depend on the weights' values).

    python benchmarks/segment_speed.py RUN_DIR [--root DATA] [--images 60]

Prints one JSON line: {"ms_per_image_p50", "ms_per_image_mean", "peak_rss_mb", ...}.
Run it in a fresh process per model, so that peak memory is that model's own.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--root", help="the dataset folder here (the run may name another)")
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    args = parser.parse_args()

    import torch

    from defectkit.config import load_config
    from defectkit.runs import peak_rss_mb
    from defectkit.runtime.inspector import Inspector

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(str(args.run_dir / "config.yaml"))
    split = json.loads((args.run_dir / "split.json").read_text())
    # split.json lists paths relative to the dataset root
    root = Path(args.root or split["root"])
    test = [root / p for p in split["test"]][: args.images]
    bundle = args.run_dir / "bundle"
    trained = (bundle / "model.safetensors").is_file()
    with tempfile.TemporaryDirectory() as scratch:
        if not trained:
            bundle = untrained_bundle(config, Path(scratch) / "bundle")
        inspector = Inspector(bundle)
        references = None
        if config.segment.reference:
            references = [p.with_name(p.name.replace("_test", "_temp")) for p in test]
        list(inspector.predict(test[:2], 1, references=references and references[:2]))  # warm
        times = []
        for i, path in enumerate(test):
            tick = time.perf_counter()
            list(inspector.predict([path], 1, references=references and [references[i]]))
            times.append(1000 * (time.perf_counter() - tick))
    print(
        json.dumps(
            {
                "ms_per_image_p50": float(np.median(times)),
                "ms_per_image_mean": float(np.mean(times)),
                "peak_rss_mb": peak_rss_mb(),
                "images": len(times),
                "threads": torch.get_num_threads(),
                "weights": "trained" if trained else "untrained (architecture only)",
            }
        )
    )


def untrained_bundle(config, folder: Path) -> Path:
    """A bundle of the run's architecture with its encoder's ImageNet weights only."""
    from defectkit.models.segmenter import build_segmenter
    from defectkit.tasks.segment.deploy import save_bundle as save_segment_bundle

    channels = 6 if config.segment.reference else 3
    model, _, prep = build_segmenter(config.model, config.segment, channels, pretrained=False)
    prep = prep.for_data(config.data)
    save_segment_bundle(folder, model, config, prep, channels, 0.5)
    return folder


if __name__ == "__main__":
    main()
