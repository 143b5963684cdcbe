"""The images a bundle's monitoring baseline is built from (`defectkit baseline`, after
training): the calibration (validation) and training images of the run's split.json. Apart
from monitor.py: reading a dataset and its split is no part of serving."""

from __future__ import annotations

import json
from pathlib import Path


def baseline_images(run_dir: Path) -> tuple[list[Path], list[Path], list[Path] | None]:
    """Calibration (validation) and training images of a run folder's split.json, with the
    validation images' references where the run's model takes them (segment or detect
    .reference=true); None for a model of the image alone, on a dataset with templates
    too (DeepPCB trained with detect.reference=false)."""
    import yaml

    from defectkit.config import ConfigError, config_from_dict
    from defectkit.data.formats import read_dataset
    from defectkit.data.splits import load_manifest

    manifest = json.loads((run_dir / "split.json").read_text())
    config_path = run_dir / "config.yaml"
    try:
        config = config_from_dict(yaml.safe_load(config_path.read_text()) or {})
    except ConfigError as error:  # a run folder written by another defectkit version
        raise ConfigError(
            f"{config_path}: {error}. The run was written by another defectkit version: "
            "delete the named keys from that file (this version has no such setting), or "
            "build the baseline from a run of this version"
        ) from error
    dataset = read_dataset(
        manifest["root"], manifest["layout"], config.data.label_mode, manifest.get("labels") or None
    )
    split = load_manifest(dataset, run_dir / "split.json")
    calibration = list(split.val) or list(split.test)
    references = [s.reference for s in calibration]
    return (
        [s.image for s in calibration],
        [s.image for s in split.train],
        references if config.paired and all(r is not None for r in references) else None,
    )
