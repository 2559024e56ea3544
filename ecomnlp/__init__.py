"""ecomnlp: one frozen text encoder, one LoRA adapter per e-commerce task.

The public API is imported lazily so ``import ecomnlp`` stays fast:
``load``, ``load_many``, ``train``, ``train_multitask``, ``evaluate``, ``cluster``.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_API = {
    "load": "ecomnlp.predictor",
    "load_many": "ecomnlp.predictor",
    "train": "ecomnlp.training",
    "train_multitask": "ecomnlp.multitask",
    "evaluate": "ecomnlp.evaluation",
    "cluster": "ecomnlp.clustering",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'ecomnlp' has no attribute {name!r}")
