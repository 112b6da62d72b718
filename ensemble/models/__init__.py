"""The six forecasters behind one interface (see base.py). Imports are lazy: torch, prophet and the
tree libraries load only when their model is asked for."""

from __future__ import annotations

import importlib

from ensemble.catalog import MODELS
from ensemble.models.base import Forecaster


def model_names() -> list[str]:
    return list(MODELS)


def get_model_class(name: str) -> type[Forecaster]:
    """The Forecaster class registered as ``name`` (one of model_names())."""
    try:
        module, cls = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {model_names()}") from None
    klass: type[Forecaster] = getattr(importlib.import_module(module), cls)
    return klass


def create_model(name: str, **params: object) -> Forecaster:
    return get_model_class(name)(**params)  # type: ignore[arg-type]
