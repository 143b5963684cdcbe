"""The Task interface and its registry. A task is one folder under tasks/: `pipeline.py`
holds one run (train, evaluate, write the run folder), `evaluate.py` its metrics on labelled
images, `deploy.py` what a bundle needs on the line (model, inference graph, decisions).
The folder's `__init__.py` registers the task from its deploy module alone, naming the run
and the evaluation as "module:function", imported on their first call: an Inspector or the
service that loads a bundle imports its own task's deploy code and nothing of training,
evaluation or the other tasks. Code outside tasks/ never tests a task's name: it asks
`get_task(name)`, and an unknown name is an error that lists the registered ones."""

from __future__ import annotations

import importlib
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
    # the graph's own settings from bundle.json (passed to `graph` as keywords), and how
    # ONNX export writes the graph's own operators ({torch op: onnxscript function})
    graph_options: Callable[[dict], dict] = lambda meta: {}
    onnx_translations: Callable[[], dict] = dict
    # the OK/NG threshold a client sees (anomaly scores are normalised: 0.5)
    shown_threshold: Callable[[dict], float | None] = lambda meta: meta.get("threshold")
    # a run interrupted after this checkpoint (in run_dir/checkpoints) goes on with --resume
    checkpoint: str = "last.pt"
    # the config sections the task reads (report.html and `config show` show these)
    sections: tuple[str, ...] = ("data", "split", "model", "train", "eval")
    # data.resize=tile models: one whole image (a normalised float32 array, C x H x W) -> its
    # Prediction, by sliding the graph's windows over it (inspector.run_graph); None: the
    # task does not tile
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


# the tasks that ship with defectkit: folders under tasks/, each imported the first time it
# is asked for (a task registered from outside the package needs no entry here)
BUILTIN = ("anomaly", "classify", "detect", "segment")


def imported_when_called(target: str) -> Callable[..., Any]:
    """A function that calls `target` ("package.module:function"), importing its module on
    the first call."""
    module, _, name = target.partition(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{target}, imported when first called"
    return call


def task_from(
    name: str,
    deploy: Any,
    run: str | Callable[[RunConfig, Path, bool], dict] = "",
    evaluate_bundle: str | Callable[[Any, Sequence[Any], str], dict] = "",
) -> Task:
    """A task from its deploy module, which defines load_model, OUTPUTS, graph, decide,
    score_names, summary, eval_summary and, where they differ from the defaults,
    graph_options, onnx_translations, shown_threshold, CHECKPOINT, SECTIONS, tiled,
    DECIDES_BY_CLASS, truth, ANSWERS_LOCATE,
    KFOLD and LEARNING_CURVE; `run` and `evaluate_bundle` as functions or as
    "module:function", imported on their first call (by default the task folder's
    pipeline.py `run_<name>` and evaluate.py `evaluate_bundle`)."""
    run = run or f"defectkit.tasks.{name}.pipeline:run_{name}"
    evaluate_bundle = evaluate_bundle or f"defectkit.tasks.{name}.evaluate:evaluate_bundle"
    optional = {
        "graph_options": "graph_options",
        "onnx_translations": "onnx_translations",
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
        run=imported_when_called(run) if isinstance(run, str) else run,
        load_model=deploy.load_model,
        outputs=deploy.OUTPUTS,
        graph=deploy.graph,
        decide=deploy.decide,
        score_names=deploy.score_names,
        evaluate_bundle=(
            imported_when_called(evaluate_bundle)
            if isinstance(evaluate_bundle, str)
            else evaluate_bundle
        ),
        summary=deploy.summary,
        eval_summary=deploy.eval_summary,
        **{k: getattr(deploy, v) for k, v in optional.items() if hasattr(deploy, v)},
    )


def list_tasks() -> list[str]:
    """Every task by name, without importing any."""
    return sorted(set(_TASKS) | set(BUILTIN))


def get_task(name: str) -> Task:
    """The registered task; a built-in one is imported (its deploy code only) on first use."""
    if name not in _TASKS and name in BUILTIN:
        importlib.import_module(f"defectkit.tasks.{name}")
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(list_tasks())}")
    return _TASKS[name]


def _load_builtin() -> None:
    """Every built-in task registered (a test that lists them all)."""
    for name in BUILTIN:
        get_task(name)
