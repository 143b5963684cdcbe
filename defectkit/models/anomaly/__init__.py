"""Anomaly methods learn from defect-free images only. Each is one file holding a plain
nn.Module with `fit(batches)` and `forward(images) -> (image_scores, anomaly_maps)`,
registered by name so that a new method is one new file."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_METHODS: dict[str, Callable[..., nn.Module]] = {}


def register_method(name: str) -> Callable:
    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _METHODS:
            raise ValueError(f"anomaly method {name!r} is already registered")
        _METHODS[name] = factory
        return factory

    return decorator


def list_methods() -> list[str]:
    _load_builtin()
    return sorted(_METHODS)


def create_method(name: str, **options) -> nn.Module:
    _load_builtin()
    if name not in _METHODS:
        raise ValueError(
            f"unknown anomaly method {name!r}; available: {', '.join(sorted(_METHODS))}"
        )
    return _METHODS[name](**options)


def _load_builtin() -> None:
    from defectkit.models.anomaly import patchcore  # noqa: F401  (registers itself)
