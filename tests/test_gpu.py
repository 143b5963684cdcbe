"""Every shipped recipe, one short epoch on a CUDA GPU (marker `gpu`, skipped without one).

The recipes keep their own model, method and training settings; only the data is swapped for a
tiny synthetic set of the same layout, so the check needs no dataset on the GPU machine:
`python -m pytest -m gpu tests/test_gpu.py`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from defectkit.config import RECIPES_DIR, load_config
from defectkit.data.synthetic import (
    make_box_set,
    make_classify_set,
    make_mask_set,
    make_paired_set,
)
from defectkit.runtime.inspector import Inspector
from defectkit.tasks import get_task

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible"),
]

RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
# the anomaly recipe once per method: each keeps its fitted state on the device its own way
CASES = [(r, ()) for r in RECIPES] + [
    ("mt_anomaly", (f"anomaly.method={m}",)) for m in ("patchcore", "padim", "autoencoder")
]


def _synthetic_data(recipe: str, root: Path) -> list[str]:
    """A tiny dataset of the recipe's layout and the overrides that point the recipe at it."""
    config = load_config(recipe)
    if config.task == "classify":
        binary = config.eval.positive == "ng"
        make_classify_set(root, per_class=12, size=64)
        if binary:  # OK/NG recipes: the scratches are the NG class, spots left out
            (root / "scratch").rename(root / "ng")
            for path in (root / "spot").iterdir():
                path.unlink()
            (root / "spot").rmdir()
        return [
            f"data.root={root}",
            "data.format=class_folders",
            "data.label_mode=default",
            "split.stratify_by=label",
        ]
    if config.task == "detect":
        make_box_set(root, count=24, size=64)
        return [f"data.root={root}", "data.format=voc", "split.stratify_by=label"]
    if config.segment.reference:
        make_paired_set(root, count=16, size=64)
        return [f"data.root={root}"]
    make_mask_set(root, per_class=16, size=64)
    extra = ["anomaly.good_label=Ok"] if config.task == "anomaly" else []
    return [f"data.root={root}", *extra]


@pytest.mark.parametrize(("recipe", "extra"), CASES)
def test_recipe_runs_one_epoch_on_the_gpu(recipe, extra, tmp_path):
    overrides = [
        *extra,
        *_synthetic_data(recipe, tmp_path / "data"),
        "data.image_size=64",
        "train.epochs=1",
        "train.device=cuda",
        "anomaly.epochs=1",
        f"out_dir={tmp_path}",
        "name=run",
    ]
    config = load_config(recipe, overrides)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = get_task(config.task)(config, run_dir, False)
    assert result["device"].startswith("cuda")
    assert (run_dir / "bundle" / "bundle.json").is_file()
    # the bundle made on the GPU inspects images on the GPU and on the CPU alike
    images = sorted(p for p in (tmp_path / "data").rglob("*.jpg") if "_temp" not in p.name)
    images += sorted((tmp_path / "data").rglob("*_*.png"))
    images = images[:2]
    references = (
        [p.with_name(p.name.replace("_test", "_temp")) for p in images]
        if config.segment.reference
        else None
    )
    verdicts = []
    for device in ("cuda", "cpu"):
        inspector = Inspector(run_dir / "bundle", device=device)
        verdicts.append([p.ok for p in inspector.predict(images, 2, None, references)])
    assert len(verdicts[0]) == len(images) and verdicts[0] == verdicts[1]
