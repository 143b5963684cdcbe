"""Task registry: `register_task(name)` on a function `run(config, run_dir, resume)`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from defectkit.config import RunConfig

TaskRunner = Callable[[RunConfig, Path, bool], dict]
_TASKS: dict[str, TaskRunner] = {}


def register_task(name: str) -> Callable[[TaskRunner], TaskRunner]:
    def decorator(run: TaskRunner) -> TaskRunner:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is already registered")
        _TASKS[name] = run
        return run

    return decorator


def list_tasks() -> list[str]:
    _load_builtin()
    return sorted(_TASKS)


def get_task(name: str) -> TaskRunner:
    _load_builtin()
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def _load_builtin() -> None:
    from defectkit.tasks import anomaly, classify, segment  # noqa: F401  (they register)
