"""Joint multi-task training: several tasks on one frozen base in one run, one task's batch per step.

Each task keeps its own head and, by default, its own LoRA adapter (``adapters="per_task"``), or
all tasks share one adapter (``"shared"``). A seeded ``TaskSampler`` picks the task of each
step. The result is one ordinary task directory per task, ``<out>/<name>``.
"""
from __future__ import annotations

import dataclasses
import itertools
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import lightning as L
import torch
from torch import nn

from .artifact import save_artifact
from .backbone import Backbone, Pooling, lora_config
from .config import DataConfig, LoraSettings, TaskSpec, TrainerSettings
from .data import LengthGroupedBatches
from .models import resolve
from .task import Task, build_task
from .training import Prepared, TrainableModule, _card, _fit_module, prepare, rank_batches, score, split_loader

AdapterMode = Literal["per_task", "shared"]
SamplerName = Literal["proportional", "temperature", "uniform"]
SHARED_ADAPTER = "shared"
MEAN_MONITOR = "val/mean"  # the mean of the tasks' monitored validation metrics


def task_probabilities(sizes: Mapping[str, int], sampler: SamplerName, temperature: float = 2.0) -> dict[str, float]:
    """How often each task's batch comes next: ``proportional`` to its training rows n_i,
    ``temperature`` (p_i ∝ n_i^(1/T)), or ``uniform``."""
    if sampler == "proportional":
        weights = {name: float(n) for name, n in sizes.items()}
    elif sampler == "temperature":
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        weights = {name: n ** (1 / temperature) for name, n in sizes.items()}
    elif sampler == "uniform":
        weights = {name: 1.0 for name in sizes}
    else:
        raise ValueError(f"unknown sampler '{sampler}': use proportional, temperature or uniform")
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


class TaskSampler(torch.utils.data.Sampler[list[tuple[str, int]]]):
    """Batches of (task, row) keys: each step draws a task (seeded) and takes that task's next batch.

    An epoch is ``steps`` batches (default: all the tasks' batches once). A task whose batches run
    out is reshuffled and continues. Every rank draws the same tasks, each from its own share.
    """

    def __init__(self, batches: Mapping[str, LengthGroupedBatches], probabilities: Mapping[str, float],
                 steps: int | None = None, seed: int = 0) -> None:
        self.batches, self.seed, self.epoch = dict(batches), seed, 0
        self.names = list(self.batches)
        self.weights = [probabilities[name] for name in self.names]
        self.steps = steps or sum(len(b) for b in self.batches.values())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _stream(self, name: str) -> Iterator[list[int]]:
        for round_ in itertools.count():  # a new shuffle for each pass, unique per (epoch, pass)
            self.batches[name].set_epoch(self.epoch * self.steps + round_)
            yield from self.batches[name]

    def __iter__(self) -> Iterator[list[tuple[str, int]]]:
        rng = random.Random(self.seed + self.epoch)
        streams = {name: self._stream(name) for name in self.names}
        for _ in range(self.steps):
            name = rng.choices(self.names, self.weights)[0]
            yield [(name, i) for i in next(streams[name])]

    def __len__(self) -> int:
        return self.steps


@dataclass
class Member:
    """One task of a joint run, as trained."""

    task: Task
    data: DataConfig
    prepared: Prepared
    head: nn.Module
    adapter: str


class _Keys(torch.utils.data.Dataset):
    """(task, row) keys map to themselves; the collate function builds the batch."""

    def __getitem__(self, key: tuple[str, int]) -> tuple[str, int]:
        return key


class MultiTaskData(L.LightningDataModule):
    """Training: one task's batch per step, drawn by a ``TaskSampler``. Validation: one loader per task."""

    def __init__(self, members: Mapping[str, Member], pad_id: int, probabilities: Mapping[str, float],
                 steps_per_epoch: int | None, seed: int) -> None:
        super().__init__()
        self.members, self.pad_id, self.probabilities = members, pad_id, probabilities
        self.steps_per_epoch, self.seed = steps_per_epoch, seed

    def _collate(self, keys: list[tuple[str, int]]) -> dict[str, Any]:
        name = keys[0][0]
        return {"task": name, **self.members[name].prepared.train.batch([i for _, i in keys], self.pad_id)}

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        batches = {name: rank_batches(m.prepared.train, m.data.batch_size, True, self.seed, self.trainer)
                   for name, m in self.members.items()}
        sampler = TaskSampler(batches, self.probabilities, self.steps_per_epoch, self.seed)
        return torch.utils.data.DataLoader(_Keys(), batch_sampler=sampler, collate_fn=self._collate)

    def val_dataloader(self) -> list[torch.utils.data.DataLoader]:
        return [split_loader(m.prepared.valid, self.pad_id, m.data.eval_batch_size, False, self.seed, self.trainer)
                for m in self.members.values()]


class MultiTaskModule(TrainableModule):
    """The backbone, every task's head, and each batch routed through its task's adapter and head."""

    def __init__(self, backbone: Backbone, members: Mapping[str, Member], pooling: Pooling,
                 settings: TrainerSettings) -> None:
        super().__init__(settings)
        self.backbone, self.pooling = backbone, pooling
        self.names = list(members)
        self.tasks = {name: m.task for name, m in members.items()}
        self.adapters = {name: m.adapter for name, m in members.items()}
        self.heads = nn.ModuleDict({name: m.head for name, m in members.items()})
        self.val_metrics = nn.ModuleDict({name: m.task.metrics().clone(prefix=f"val/{name}/")
                                          for name, m in members.items()})

    def _route(self, name: str) -> None:
        """Activate the task's adapter. peft's set_adapter freezes the other adapters: make them
        trainable again, so that the optimizer, the checkpoints and DDP see all of them."""
        adapter = self.adapters[name]
        if self.backbone.active != adapter:
            self.backbone.use(adapter, trainable=True)
            self.backbone.encoder.set_requires_grad(self.backbone.adapters, True)

    def forward(self, name: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self._route(name)
        return self.heads[name](self.backbone(input_ids, attention_mask, self.pooling))

    def training_step(self, batch: dict[str, Any], _: int) -> torch.Tensor:
        name, size = batch["task"], len(batch["targets"])
        loss = self.tasks[name].loss(self(name, batch["input_ids"], batch["attention_mask"]), batch["targets"])
        # per task: an epoch mean (a per-step value would repeat while other tasks' steps run)
        self.log(f"train/{name}/loss", loss, on_step=False, on_epoch=True, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], _: int, dataloader_idx: int = 0) -> None:
        name = self.names[dataloader_idx]
        logits = self(name, batch["input_ids"], batch["attention_mask"]).float()
        self.log(f"val/{name}/loss", self.tasks[name].loss(logits, batch["targets"]), sync_dist=True,
                 batch_size=len(logits), add_dataloader_idx=False)
        self.val_metrics[name].update(logits, batch["targets"])

    def on_validation_epoch_end(self) -> None:
        values: dict[str, torch.Tensor] = {}
        for metrics in self.val_metrics.values():
            values.update(metrics.compute())
            metrics.reset()
        self.log_dict(values, add_dataloader_idx=False)
        mean = torch.stack([values[f"val/{name}/{task.monitor}"] for name, task in self.tasks.items()]).mean()
        self.log(MEAN_MONITOR, mean, prog_bar=True, add_dataloader_idx=False)


def _check_names(tasks: Mapping[str, TaskSpec]) -> None:
    if not tasks:
        raise ValueError("train_multitask needs at least one task")
    for name in tasks:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"task name '{name}' names a directory and an adapter: use letters, digits, _ and -")


def train_multitask(
    tasks: dict[str, TaskSpec],
    model: str,
    out: str,
    adapters: AdapterMode = "per_task",
    sampler: SamplerName = "proportional",
    temperature: float = 2.0,
    pooling: Literal["mean", "cls"] = "mean",
    lora: LoraSettings = LoraSettings(),
    trainer: TrainerSettings = TrainerSettings(),
    steps_per_epoch: int | None = None,
) -> dict[str, Any]:
    """Train several tasks jointly on one frozen base; save each as the task directory ``<out>/<name>``.

    Each step trains one task's batch, the task drawn by ``sampler``. Validation logs
    ``val/<name>/<metric>`` per task; early stopping and the best checkpoint follow ``val/mean``, the
    mean of the tasks' monitored metrics (unless ``trainer.monitor`` names another). An epoch is
    ``steps_per_epoch`` steps (default: every task's batches once). Logs and checkpoints go to
    ``<out>.train/``. Under DDP, use the strategy ``ddp_find_unused_parameters_true``: each step
    leaves the other tasks' heads (and adapters) unused.
    """
    started = time.perf_counter()
    _check_names(tasks)
    L.seed_everything(trainer.seed, workers=True)
    base_dir = resolve(model)
    backbone = Backbone(base_dir)
    members: dict[str, Member] = {}
    for name, spec in tasks.items():
        task = build_task(spec.task, spec.task_options)
        prepared = prepare(task, spec.data, backbone.tokenizer, backbone.max_positions, trainer.seed)
        members[name] = Member(task, spec.data, prepared, task.build_head(backbone.hidden_size),
                               name if adapters == "per_task" else SHARED_ADAPTER)
    for adapter in dict.fromkeys(m.adapter for m in members.values()):
        backbone.add_adapter(adapter, lora_config(lora))
    backbone.encoder.set_requires_grad(backbone.adapters, True)  # add_adapter left only the last one trainable
    probabilities = task_probabilities({name: len(m.prepared.train.ids) for name, m in members.items()},
                                       sampler, temperature)
    module = MultiTaskModule(backbone, members, pooling, trainer)
    datamodule = MultiTaskData(members, backbone.tokenizer.pad_token_id, probabilities, steps_per_epoch, trainer.seed)
    out_path, monitor = Path(out), trainer.monitor or MEAN_MONITOR
    fit, best = _fit_module(module, datamodule, trainer, monitor, out_path)
    summary: dict[str, Any] = {"out": str(out_path), "steps": fit.global_step, "probabilities": probabilities,
                               "tasks": {name: {"out": str(out_path / name), **m.prepared.stats}
                                         for name, m in members.items()}}
    if not fit.is_global_zero:
        return summary
    metrics = {name: _scores(backbone, m, pooling) for name, m in members.items()}
    summary.update(metrics=metrics, wall_time_s=round(time.perf_counter() - started, 1))
    for name, m in members.items():
        card = _card(m.task, m.data, model, base_dir, pooling, dataclasses.asdict(lora), m.prepared, fit, best,
                     trainer.seed, metrics[name], summary["wall_time_s"])
        card["multitask"] = {
            "name": name,
            "others": {other: {"task": o.task.name, "path": str(out_path / other)}
                       for other, o in members.items() if other != name},
            "adapters": adapters, "sampler": sampler, "temperature": temperature,
            "probabilities": probabilities, "monitor": monitor,
        }
        save_artifact(out_path / name, backbone, m.adapter, m.head, card)
    return summary


def _scores(backbone: Backbone, member: Member, pooling: Pooling) -> dict[str, dict[str, float]]:
    """Valid (and test) metrics of one trained task, through the prediction path."""
    splits = {"valid": member.prepared.valid, "test": member.prepared.test}
    return {kind: score(backbone, member.task, member.head, split, pooling, member.data.eval_batch_size, member.adapter)
            for kind, split in splits.items() if split is not None}
