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

    def __call__(self, config: RunConfig, run_dir: Path, resume: bool = False) -> dict:
        return self.run(config, run_dir, resume)


_TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    return _TASKS.add(task.name, task)


def task_from(name: str, run: Callable[[RunConfig, Path, bool], dict], deploy: Any) -> Task:
    """A task from its run and its deploy module, which defines load_model, OUTPUTS, graph,
    decide, score_names, evaluate_bundle, summary, eval_summary and, where they differ
    from the defaults, shown_threshold and CHECKPOINT."""
    optional = {"shown_threshold": "shown_threshold", "checkpoint": "CHECKPOINT"}
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
    from defectkit.tasks import anomaly, classify, segment  # noqa: F401  (they register)


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
    """The run's dataset with every file checked (data.on_bad_image); samples left out for
    a bad file are listed in the run's left_out.json (and its report)."""
    from defectkit.data.checks import read_checked
    from defectkit.engine.distributed import is_main
    from defectkit.runs import write_json

    d = config.data
    dataset = read_checked(d.root, d.format, d.label_mode, d.on_bad_image)
    if dataset.left_out and is_main():
        write_json(run_dir / "left_out.json", [vars(b) for b in dataset.left_out])
        logging.getLogger("defectkit").warning(
            "left out %d sample(s) with a bad file (data.on_bad_image=skip): %s",
            len(dataset.left_out),
            "; ".join(f"{b.file}: {b.reason}" for b in dataset.left_out),
        )
    return dataset
