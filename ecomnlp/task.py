"""The task contract and the task registry.

A task is a dataclass whose fields are its options plus its fitted state (e.g. labels), so
``dataclasses.asdict(task)`` is what the card stores and ``cls(**state)`` rebuilds it.
Tasks live in ``tasks/`` (installed as ``ecomnlp.tasks``) or in any package that exposes
them through the ``ecomnlp.tasks`` entry-point group; each registers with ``@register_task``.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torchmetrics import MetricCollection


@dataclass(frozen=True)
class Schema:
    """The fields a task reads from a row: text fields go to the encoder, in order."""

    text: tuple[str, ...] = ("text",)
    label: str | None = "label"
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()


@runtime_checkable
class Task(Protocol):
    """What every task declares. ``name``, ``schema`` and ``monitor`` are class attributes."""

    name: ClassVar[str]
    schema: ClassVar[Schema]
    monitor: ClassVar[str]  # validation metric to maximise, a key of metrics()

    def fit(self, labels: Sequence[Any]) -> None:
        """Learn the label space from the training labels only."""

    def encode_target(self, value: Any) -> Any:
        """One row's label as a training target; ValueError with a reason if it cannot be."""

    def build_head(self, hidden_size: int) -> nn.Module:
        """A small module from pooled encoder vectors to logits."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def metrics(self) -> MetricCollection:
        """Fresh torchmetrics collection updated with (logits, targets)."""

    def decode(self, logits: torch.Tensor) -> list[dict[str, Any]]:
        """What a user gets back, one dict per row."""

    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor, out_dir: Path) -> dict[str, Any]:
        """Full test-set report (JSON-able); may write figures into ``out_dir``."""


_REGISTRY: dict[str, type] = {}
_DISCOVERED = False


def register_task(cls: type) -> type:
    """Class decorator: make a task available by its ``name``."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"task {cls.__name__} must be a dataclass")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"task name '{cls.name}' is taken by {existing.__module__}.{existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import ecomnlp.tasks as builtin

    for module in pkgutil.iter_modules(builtin.__path__):
        importlib.import_module(f"ecomnlp.tasks.{module.name}")
    from importlib.metadata import entry_points

    for entry in entry_points(group="ecomnlp.tasks"):
        entry.load()


def task_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def task_class(name: str) -> type:
    _discover()
    if name not in _REGISTRY:
        raise KeyError(f"unknown task '{name}'; registered tasks: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_task(name: str, options: dict[str, Any] | None = None) -> Task:
    """Instantiate a registered task from its options (or a card's saved state)."""
    cls = task_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(options or {}) - fields
    if unknown:
        raise ValueError(f"task '{name}' has no option(s) {sorted(unknown)}; options: {sorted(fields)}")
    return cls(**(options or {}))


def task_state(task: Task) -> dict[str, Any]:
    return dataclasses.asdict(task)
