"""defectkit: industrial visual inspection, from a folder of images to a trusted inspector.

import defectkit
data = defectkit.load_dataset("../shared/data/neu-det/IMAGES")
run_dir, metrics = defectkit.train("neu_classify", ["train.epochs=4"])
inspector = defectkit.Inspector(run_dir)
for p in inspector.predict(["part_0001.png"]):
    print(p.label, p.ok, p.scores)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defectkit._version import __version__

if TYPE_CHECKING:
    from defectkit.config import RunConfig
    from defectkit.data.samples import SampleSet


def load_dataset(root: str | Path, format: str = "auto", label_mode: str = "default") -> SampleSet:
    """Read a dataset folder in any known layout (see `defectkit data formats`)."""
    from defectkit.data.formats import read_dataset

    return read_dataset(root, format, label_mode)


def train(
    config: RunConfig | str | None = None,
    overrides: list[str] | None = None,
    resume: Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train and evaluate from a recipe name, a YAML path or a RunConfig; returns the run
    folder and its metrics. `resume` continues an interrupted run folder."""

    from defectkit.config import RunConfig, load_config
    from defectkit.engine.distributed import (
        close,
        init_distributed,
        is_main,
        launched,
        share_from_main,
    )
    from defectkit.runs import close_failed_start, new_run_dir
    from defectkit.tasks import get_task
    from defectkit.tasks.resume import resume_config

    if resume is not None:
        run_dir, made = Path(resume), False
        source = None if config is None or isinstance(config, RunConfig) else config
        config = resume_config(run_dir, source, overrides)
    else:
        if not isinstance(config, RunConfig):
            config = load_config(config, overrides)
    task = get_task(config.task)  # an unknown task fails before a folder is made
    if launched():  # torchrun: every rank joins, rank 0 makes the one run folder
        init_distributed(config.train.device)
    if resume is None:
        run_dir, made = new_run_dir(config) if is_main() else (Path(), False)
        run_dir = Path(share_from_main(str(run_dir)))
    if is_main():
        logging.getLogger("defectkit").info("run folder: %s", run_dir)
    try:
        result = task(config, run_dir, resume is not None)
        close()  # every rank done: leave the process group
        return run_dir, result
    except KeyboardInterrupt as interrupt:
        note = close_failed_start(run_dir, made, interrupt) if is_main() else "interrupted"
        raise KeyboardInterrupt(f"interrupted; {note}") from None
    except Exception as error:
        if is_main():
            logging.getLogger("defectkit").info("%s", close_failed_start(run_dir, made, error))
        raise


def calibrate(run_dir: str | Path, overrides: list[str]) -> tuple[Path, dict[str, Any]]:
    """Make a finished run's decisions again from its trained model with other calibration
    settings (runs.CALIBRATE_MAY_CHANGE: threshold rules and targets, box post-processing,
    test-time views): its thresholds chosen again on its own validation images, its test
    images evaluated, its bundle and report rewritten; the weights are not touched. The
    evaluation it replaces goes to run_dir/before/<n>/. Returns the run folder and the new
    metrics."""
    from defectkit.config import ConfigError, save_config
    from defectkit.tasks.resume import put_back_evaluation, resume_config, set_aside_evaluation
    from defectkit.tasks.settings import calibration_problems

    run_dir = Path(run_dir)
    config = resume_config(run_dir, None, overrides, finished=True)
    problems = calibration_problems(config)
    if problems:
        raise ConfigError("\n".join(problems))
    kept = set_aside_evaluation(run_dir)
    logging.getLogger("defectkit").info("the evaluation before: %s", kept)
    save_config(config, run_dir / "config.yaml")
    try:
        return train(resume=run_dir)
    except KeyboardInterrupt:
        put_back_evaluation(run_dir, kept)
        raise KeyboardInterrupt(f"interrupted; {run_dir} is as it was before") from None
    except BaseException:  # the run as it was, then the error
        put_back_evaluation(run_dir, kept)
        raise


def train_folds(config: RunConfig) -> tuple[Path, dict[str, Any]]:
    """Every fold of split.method=kfold as its own run (<out_dir>/<name>/fold-<k>), then
    kfold.json and report.html beside them: per-fold numbers, mean, standard deviation and
    (classify) the pooled out-of-fold numbers."""
    import time
    from dataclasses import replace

    from defectkit.runs import write_json
    from defectkit.tasks import get_task
    from defectkit.tasks.folds import summarise_folds, write_folds_report

    if config.split.method != "kfold":
        raise ValueError(
            "--folds all trains every fold of split.method=kfold: add --set "
            "split.method=kfold (and split.folds=K)"
        )
    if not get_task(config.task).kfold:
        raise ValueError(f"the {config.task} task splits its images its own way: no k-fold")
    folder = Path(config.out_dir) / (
        config.name or f"{config.task}-kfold-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    run_dirs, results = [], []
    for fold in range(config.split.folds):
        fold_config = replace(
            config,
            name=f"fold-{fold}",
            out_dir=str(folder),
            split=replace(config.split, fold=fold),
        )
        run_dir, result = train(fold_config)
        run_dirs.append(run_dir)
        results.append(result)
    summary = summarise_folds(config.task, run_dirs, results)
    write_json(folder / "kfold.json", summary)
    write_folds_report(summary, folder)
    return folder, summary


def learning_curve(
    config: RunConfig, shots: list[int], repeats: int, keep_models: bool = False
) -> tuple[Path, dict[str, Any]]:
    """A classifier trained on k images per class (split.per_class=k, per_class_seed=r) for
    every k in `shots` and r < `repeats`, each its own run (<out_dir>/<name>/k<k>-r<r>), then
    curve.json, the plots and report.html beside them. Finished runs are kept and reused, an
    interrupted one resumes from its checkpoint: run the same command again to go on. A
    finished run's bundle and checkpoints are removed unless `keep_models`."""
    import time
    from dataclasses import replace

    from defectkit.runs import has_checkpoint, write_json
    from defectkit.tasks import get_task
    from defectkit.tasks.curve import (
        drop_models,
        run_name,
        run_record,
        summarise_curve,
        write_curve_report,
    )

    if not get_task(config.task).learning_curve:
        raise ValueError(
            f"learning-curve trains classifiers (k images per class); this config's task "
            f"is {config.task}"
        )
    folder = Path(config.out_dir) / (config.name or "learning-curve")
    records = []
    for k in shots:
        for repeat in range(repeats):
            run_dir = folder / run_name(k, repeat)
            if not (run_dir / "metrics.json").is_file():
                run_config = replace(
                    config,
                    name=run_dir.name,
                    out_dir=str(folder),
                    split=replace(config.split, per_class=k, per_class_seed=repeat),
                )
                if has_checkpoint(run_dir):
                    train(None, resume=run_dir)
                else:
                    train(run_config)
            if not keep_models:
                drop_models(run_dir)
            records.append(run_record(run_dir, k, repeat))
            logging.getLogger("defectkit").info(
                "learning curve: k=%d repeat %d: accuracy %.4f (%s)",
                k,
                repeat,
                records[-1]["accuracy"],
                time.strftime("%H:%M:%S"),
            )
    summary = summarise_curve(records)
    write_json(folder / "curve.json", summary)
    write_curve_report(summary, folder)
    return folder, summary


def evaluate(bundle: str | Path, data: str | Path, **options: Any) -> dict[str, Any]:
    """Metrics of a bundle on a labelled dataset folder."""
    from defectkit.runtime.evaluate import evaluate_bundle

    return evaluate_bundle(bundle, data, **options)


def __getattr__(name: str) -> Any:
    if name == "Inspector":  # imported on first use: it pulls in torch
        from defectkit.runtime.inspector import Inspector

        return Inspector
    raise AttributeError(f"module 'defectkit' has no attribute {name!r}")


__all__ = ["Inspector", "__version__", "evaluate", "load_dataset", "train", "train_folds"]
