"""Batch inspection on a Ray cluster: the same Inspector as `defectkit predict`, in a pool of
Ray actors fed by a Ray Data pipeline, so a folder or bucket of millions of images is spread
over every node. The results are the local `predict`'s, row for row: a CSV / JSONL written
by the driver in input order, or Parquet files written by the cluster (a folder). A file
that cannot be inspected gets a row saying why; it never stops the run.

Ray is an optional extra: `pip install 'defectkit[ray]'`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from defectkit.predictions import Prediction, PredictionWriter, Region

INSTALL = "the ray engine needs Ray Data: pip install 'defectkit[ray]' (or 'ray[data]')"


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise RuntimeError(INSTALL) from None
    return ray


class InspectorActor:
    """One Ray actor: loads the bundle once, then inspects batches of file paths."""

    def __init__(self, bundle: str, backend: str, device: str, threads: int):
        from defectkit.runtime.inspector import Inspector

        self.inspector = Inspector(bundle, backend=backend, device=device, threads=threads)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from defectkit.data.images import load_image, without_path
        from defectkit.data.samples import DatasetError

        rows: list[dict[str, Any]] = []
        images, references, names, slots = [], [], [], []
        for index, path, reference in zip(
            batch["index"], batch["path"], batch["reference"], strict=True
        ):
            row = {"index": int(index), "image": str(path), "prediction": "", "error": ""}
            try:
                image = load_image(Path(path))
                if reference:
                    references.append(load_image(Path(reference)))  # after its image loaded
                images.append(image)
                names.append(str(path))
                slots.append(len(rows))
            except DatasetError as error:
                row["error"] = without_path(str(error), Path(path))
            rows.append(row)
        if images:
            predictions = self.inspector.predict_images(images, names, references or None)
            for slot, prediction in zip(slots, predictions, strict=True):
                rows[slot].update(
                    label=prediction.label,
                    ok=prediction.ok,
                    ng_score=prediction.ng_score,
                    prediction=json.dumps(prediction.to_dict()),
                )
        columns = ("index", "image", "label", "ok", "ng_score", "prediction", "error")
        return {key: [row.get(key) for row in rows] for key in columns}


def prediction_from_json(text: str) -> Prediction:
    values = json.loads(text)
    values["regions"] = [Region(**r) for r in values["regions"]]
    values["boxes"] = [Region(**r) for r in values["boxes"]]
    return Prediction(**values)


def predict_with_ray(
    bundle: str | Path,
    paths: Sequence[Path],
    out: str | Path,
    references: Sequence[Path] | None = None,
    address: str | None = None,
    actors: int = 2,
    cpus_per_actor: float = 1,
    gpus_per_actor: float = 0,
    batch_size: int = 16,
    backend: str = "torch",
    progress: bool = False,
) -> dict[str, Any]:
    """Inspect `paths` on the Ray cluster at `address` (a running one, "auto", or None for
    a local one started here). `out`: a .csv / .jsonl file (rows in input order, exactly as
    `defectkit predict` writes them) or a folder for Parquet files (written by the cluster,
    one row per image with the prediction as JSON)."""
    ray = _ray()
    from defectkit.bundle import read_meta
    from defectkit.tasks import get_task

    meta = read_meta(Path(bundle))  # a damaged bundle fails here, not in every actor
    score_names = get_task(meta["task"]).score_names(meta)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = progress
    items = [
        {"index": i, "path": str(p), "reference": str(references[i]) if references else ""}
        for i, p in enumerate(paths)
    ]
    dataset = ray.data.from_items(items).map_batches(
        InspectorActor,
        fn_constructor_kwargs={
            "bundle": str(Path(bundle).resolve()),
            "backend": backend,
            "device": "cuda" if gpus_per_actor else "cpu",
            "threads": max(1, int(cpus_per_actor)),
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
    )
    out = Path(out)
    if out.suffix not in (".csv", ".jsonl"):
        dataset.write_parquet(str(out))
        return {"output": str(out), "format": "parquet", "images": len(items)}
    inspected = 0
    with PredictionWriter(out, score_names) as writer:
        for row in dataset.iter_rows():
            if row["error"]:
                writer.write_error(row["image"], row["error"])
            else:
                writer.write(prediction_from_json(row["prediction"]))
                inspected += 1
    return {
        "output": str(out),
        "format": out.suffix[1:],
        "images": len(items),
        "inspected": inspected,
        "skipped": len(items) - inspected,
    }
