"""`defectkit train --resume`: the interrupted run's own config, checked before anything
runs (an unfinished run of a task that resumes; only the settings that change how it runs,
not what it computes, may be given again). `defectkit calibrate`: a finished run's
decisions made again from its trained model, with other calibration settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defectkit.config import RunConfig
from defectkit.runs import CALIBRATE_MAY_CHANGE, EVALUATION_OUTPUTS, FAILED, RESUME_MAY_CHANGE
from defectkit.tasks import get_task


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_config(
    run_dir: Path,
    source: str | None = None,
    overrides: list[str] | None = None,
    finished: bool = False,
) -> RunConfig:
    """The run's own config, checked before anything runs: the folder must hold an
    unfinished run of a task that resumes, and a --config / --set given with --resume may
    only change RESUME_MAY_CHANGE (every other difference is listed in the refusal).
    finished: the folder must hold a finished run instead (`defectkit calibrate`), and the
    settings may change CALIBRATE_MAY_CHANGE."""
    from defectkit.config import (
        ConfigError,
        _merge,
        config_from_dict,
        config_to_dict,
        load_config,
        parse_overrides,
    )

    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(f"{run_dir} holds no config.yaml: not a run folder to resume")
    import yaml

    saved = config_from_dict(yaml.safe_load(saved_path.read_text()))
    may_change = CALIBRATE_MAY_CHANGE if finished else RESUME_MAY_CHANGE
    if finished and not (run_dir / "metrics.json").is_file():
        raise ConfigError(
            f"{run_dir} holds no metrics.json: not a finished run (an interrupted one goes on "
            f"with `defectkit train --resume {run_dir}`)"
        )
    if not finished and (run_dir / "metrics.json").is_file():
        raise ConfigError(
            f"{run_dir} is a finished run (metrics.json, bundle/): nothing to resume; "
            f"`defectkit calibrate {run_dir} --set ...` chooses its thresholds again, or "
            "train a new run, e.g. with train.init_from to start from its weights"
        )
    checkpoint = get_task(saved.task).checkpoint
    # the task's own checkpoint, or the shared epoch loop's (an anomaly method that trains)
    if not any((run_dir / "checkpoints" / name).is_file() for name in (checkpoint, "last.pt")):
        failed = run_dir / FAILED
        why = f" ({failed.read_text().strip()})" if failed.is_file() else ""
        raise ConfigError(
            f"{run_dir} holds no checkpoints/{checkpoint}: it stopped before its first "
            f"checkpoint{why}; nothing to resume, train it again"
        )
    if source is None and not overrides:
        return saved
    if source is not None:
        requested = load_config(source, overrides)
    else:
        requested = config_from_dict(_merge(config_to_dict(saved), parse_overrides(overrides)))
    if requested.task != saved.task:
        raise ConfigError(
            f"{run_dir} is a {saved.task} run; --config asks for task {requested.task}: a "
            "resumed run keeps its task (train a new run for the other one)"
        )
    before, after = _flat(config_to_dict(saved)), _flat(config_to_dict(requested))
    changed = [k for k in before if before[k] != after[k] and k not in may_change]
    if changed:
        lines = "\n".join(f"  {k}: {before[k]!r} -> {after[k]!r}" for k in changed)
        what = "calibrating" if finished else "resuming"
        raise ConfigError(
            f"{what} {run_dir} with other settings would change what the run computes:\n"
            f"{lines}\nDrop them (only {', '.join(may_change)} may change), or train a new run."
        )
    return config_from_dict(
        _merge(
            config_to_dict(saved),
            _unflat({k: after[k] for k in may_change if k in after}),
        )
    )


def set_aside_evaluation(run_dir: Path) -> Path:
    """Move a finished run's evaluation (EVALUATION_OUTPUTS) and its config.yaml into
    run_dir/before/<n>/, the next free n, so that nothing written is lost when it is made
    again; the config stays in place as well (the run's settings until they are changed)."""
    import shutil

    n = 1
    while (run_dir / "before" / str(n)).exists():
        n += 1
    keep = run_dir / "before" / str(n)
    keep.mkdir(parents=True)
    shutil.copy2(run_dir / "config.yaml", keep / "config.yaml")
    for name in EVALUATION_OUTPUTS:
        if (run_dir / name).exists():
            (run_dir / name).rename(keep / name)
    return keep


def put_back_evaluation(run_dir: Path, kept: Path) -> None:
    """Undo set_aside_evaluation: whatever the new evaluation wrote goes, the kept files
    (config.yaml included) return to the run folder."""
    import shutil

    for name in (*EVALUATION_OUTPUTS, "config.yaml"):
        new = run_dir / name
        if (kept / name).exists():
            if new.is_dir():
                shutil.rmtree(new)
            else:
                new.unlink(missing_ok=True)
            (kept / name).rename(new)
    shutil.rmtree(kept)
    if not any((run_dir / "before").iterdir()):
        (run_dir / "before").rmdir()


def _unflat(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested
