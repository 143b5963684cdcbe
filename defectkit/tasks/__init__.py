"""The Task interface and its registry. A task is one folder under tasks/: its package
holds the pipeline of one run (`run`), its `deploy.py` what the bundle, the inference
graph, the Inspector, `eval` and the command line ask of it. Code outside tasks/ never
tests a task's name: it asks `get_task(name)`, and an unknown name is an error that lists
the registered ones."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectkit.config import RunConfig
from defectkit.registry import Registry
from defectkit.runs import FAILED, RESUME_MAY_CHANGE


@dataclass(frozen=True)
class Task:
    """What the rest of defectkit asks of a task."""

    name: str
    # one run: train / fit, evaluate, write metrics, report and bundle into run_dir
    run: Callable[[RunConfig, Path, bool], dict]
    # a bundle's model with its fitted state, from the folder and its bundle.json
    load_model: Callable[[Path, dict], Any]
    # the inspection graph (both backends, ONNX export): output names, and the function
    # from the model and normalised images to those outputs (options: bundle.json facts)
    outputs: tuple[str, ...]
    graph: Callable[..., Any]
    # the graph's outputs for a batch -> one Prediction per image
    decide: Callable[[Any, Sequence[str], list, Sequence[Any]], list]
    # the keys of Prediction.scores (columns of predict's CSV)
    score_names: Callable[[dict], list[str]]
    # metrics of a bundle on labelled samples, as `defectkit eval` reports them
    evaluate_bundle: Callable[[Any, Sequence[Any], str], dict]
    # the command line's summary of a run's result and of an eval result
    summary: Callable[[dict], str]
    eval_summary: Callable[[dict], str]
    # the OK/NG threshold a client sees (anomaly scores are normalised: 0.5)
    shown_threshold: Callable[[dict], float | None] = lambda meta: meta.get("threshold")
    # a run interrupted after this checkpoint (in run_dir/checkpoints) goes on with --resume
    checkpoint: str = "last.pt"
    # the config sections the task reads (report.html and `config show` show these)
    sections: tuple[str, ...] = ("data", "split", "model", "train", "eval")
    # data.resize=tile models: one whole image (normalised, C x H x W) -> its Prediction,
    # by sliding the graph's windows over it (inspector.run_graph); None: the task does not tile
    tiled: Callable[[Any, str, Any, Any], Any] | None = None
    # what an operator acts on: the predicted class (a classifier), else OK / NG
    decides_by_class: bool = False
    # the call a labelled sample should get, in the terms of that decision ("OK" / "NG" or
    # the class), from the sample and the bundle's classes; None: no comparison of bundles
    truth: Callable[[Any, Sequence[str]], str] | None = None
    # operators may draw where the defect is: their feedback exports as a box dataset
    answers_locate: bool = False
    # `train --folds all` trains every fold of split.method=kfold
    kfold: bool = True
    # `learning-curve` trains it on k images per class (split.per_class)
    learning_curve: bool = False

    def __call__(self, config: RunConfig, run_dir: Path, resume: bool = False) -> dict:
        return self.run(config, run_dir, resume)


_TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    return _TASKS.add(task.name, task)


def task_from(name: str, run: Callable[[RunConfig, Path, bool], dict], deploy: Any) -> Task:
    """A task from its run and its deploy module, which defines load_model, OUTPUTS, graph,
    decide, score_names, evaluate_bundle, summary, eval_summary and, where they differ
    from the defaults, shown_threshold, CHECKPOINT, SECTIONS, tiled, DECIDES_BY_CLASS,
    truth, ANSWERS_LOCATE, KFOLD and LEARNING_CURVE."""
    optional = {
        "shown_threshold": "shown_threshold",
        "checkpoint": "CHECKPOINT",
        "sections": "SECTIONS",
        "tiled": "tiled",
        "decides_by_class": "DECIDES_BY_CLASS",
        "truth": "truth",
        "answers_locate": "ANSWERS_LOCATE",
        "kfold": "KFOLD",
        "learning_curve": "LEARNING_CURVE",
    }
    return Task(
        name=name,
        run=run,
        load_model=deploy.load_model,
        outputs=deploy.OUTPUTS,
        graph=deploy.graph,
        decide=deploy.decide,
        score_names=deploy.score_names,
        evaluate_bundle=deploy.evaluate_bundle,
        summary=deploy.summary,
        eval_summary=deploy.eval_summary,
        **{k: getattr(deploy, v) for k, v in optional.items() if hasattr(deploy, v)},
    )


def list_tasks() -> list[str]:
    _load_builtin()
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    _load_builtin()
    return _TASKS.lookup(name)


def _load_builtin() -> None:
    from defectkit.tasks import anomaly, classify, detect, segment  # noqa: F401  (they register)


def open_run(
    config: RunConfig,
    run_dir: Path,
    resume: bool,
    make_split_with: Callable[[Any], Any] | None = None,
    method: str = "",
):
    """What every task's run starts with: seeds, CPU threads, the device, the dataset and
    its split (`make_split_with(dataset)` for a task's own rule, else split.method; the saved
    split.json when resuming), and split.json + config.yaml written.
    Returns (device, dataset, split)."""
    import torch

    from defectkit.config import save_config
    from defectkit.data.splits import load_manifest, make_split, save_manifest
    from defectkit.engine.distributed import barrier, init_distributed, is_main, launched
    from defectkit.engine.train import pick_device, seed_everything

    seed_everything(config.train.seed)  # the same on every rank: the same split everywhere
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = (
        init_distributed(config.train.device) if launched() else pick_device(config.train.device)
    )
    dataset = read_data(config, run_dir)
    manifest = run_dir / "split.json"
    if resume:
        split = load_manifest(dataset, manifest)
    elif make_split_with is not None:
        split = make_split_with(dataset)
    else:
        split = make_split(dataset, config.split)
    if is_main():
        save_manifest(split, dataset, manifest, config.split, method)
        save_config(config, run_dir / "config.yaml")
    barrier()
    return device, dataset, split


def read_data(config: RunConfig, run_dir: Path):
    """The run's dataset, every setting held against it (tasks/settings.py), then every file
    checked (data.on_bad_image); samples left out for a bad file are listed in the run's
    left_out.json (and its report)."""
    from defectkit.data.checks import check_dataset
    from defectkit.data.formats import read_dataset
    from defectkit.engine.distributed import is_main
    from defectkit.runs import write_json
    from defectkit.tasks.settings import check_settings

    d = config.data
    dataset = read_dataset(d.root, d.format, d.label_mode)
    check_settings(config, dataset)  # before a single image is decoded
    dataset = check_dataset(dataset, d.on_bad_image)
    if dataset.left_out and is_main():
        write_json(run_dir / "left_out.json", [vars(b) for b in dataset.left_out])
        logging.getLogger("defectkit").warning(
            "left out %d sample(s) with a bad file (data.on_bad_image=skip): %s",
            len(dataset.left_out),
            "; ".join(f"{b.file}: {b.reason}" for b in dataset.left_out),
        )
    return dataset


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_config(
    run_dir: Path, source: str | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """The run's own config, checked before anything runs: the folder must hold an
    unfinished run of a task that resumes, and a --config / --set given with --resume may
    only change RESUME_MAY_CHANGE (every other difference is listed in the refusal)."""
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
    if (run_dir / "metrics.json").is_file():
        raise ConfigError(
            f"{run_dir} is a finished run (metrics.json, bundle/): nothing to resume; train "
            "a new run, e.g. with train.init_from to start from its weights"
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
    changed = [k for k in before if before[k] != after[k] and k not in RESUME_MAY_CHANGE]
    if changed:
        lines = "\n".join(f"  {k}: {before[k]!r} -> {after[k]!r}" for k in changed)
        raise ConfigError(
            f"resuming {run_dir} with other settings would change what the run computes:\n"
            f"{lines}\nResume without them (only {', '.join(RESUME_MAY_CHANGE)} may change), "
            "or train a new run."
        )
    return config_from_dict(
        _merge(
            config_to_dict(saved),
            _unflat({k: after[k] for k in RESUME_MAY_CHANGE if k in after}),
        )
    )


def _unflat(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested
