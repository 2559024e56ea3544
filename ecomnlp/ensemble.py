"""Prediction ensembles: trained adapters of one task (e.g. one config trained with different seeds) on one
shared base, their logits averaged (``predictor.average_logits``).

Adapters trained from different random starts and batch orders make partly different errors. Each member
costs one more encoder pass per prediction. The ensemble is one task directory: the first member where a
single task keeps its adapter and head (so ``PeftModel.from_pretrained`` reads it as that member alone), the
others under ``members/<i>/``. With ``lexical`` a lexical part (``ecomnlp.lexical``) is fitted on the training
rows and its weight chosen on validation for the averaged logits. ``ecomnlp.load`` predicts with every member.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

from .artifact import read_card, save_artifact
from .config import DataConfig
from .predictor import attach, average_logits, backbone_for, predict_logits
from .training import fit_blend, lexical_card, prepare, split_metrics, split_seed

_SHARED = ("task", "task_state", "pooling", "max_length")  # card fields every member must share


def _check_members(models: Sequence[str], cards: Sequence[dict[str, Any]]) -> None:
    if len(models) < 2:
        raise ValueError("an ensemble needs at least two trained task directories")
    first = cards[0]
    for path, card in zip(models, cards):
        if card.get("kind") or card.get("ensemble"):
            raise ValueError(f"{path} is not a single trained text task (kind {card.get('kind', 'ensemble')!r}); "
                             "an ensemble's members are directories written by `ecomnlp train` or `finetune`")
        for key in _SHARED:
            if card[key] != first[key]:
                raise ValueError(f"{path}: {key} {card[key]!r} differs from {models[0]}'s {first[key]!r}")
        if card["base_model"]["checksum"] != first["base_model"]["checksum"]:
            raise ValueError(f"{path} was trained on another base model than {models[0]}")


def build_ensemble(models: Sequence[str], data: DataConfig, out: str, lexical: bool = False) -> dict[str, Any]:
    """Write the ensemble of the trained task directories ``models`` to ``out`` (atomically; the members are
    left unchanged). Returns its validation (and, given ``data.test``, test) metrics with each member's alone."""
    started = time.perf_counter()
    cards = [read_card(m) for m in models]
    _check_members(models, cards)
    first = cards[0]
    backbone = backbone_for(models[0], None, "cpu")
    members = [attach(backbone, path, f"{first['task']}-member{i}") for i, path in enumerate(models)]
    task = members[0].task
    data = dataclasses.replace(data, columns=data.columns or first.get("columns", {}), max_length=first["max_length"])
    prepared = prepare(task, data, backbone.tokenizer, backbone.max_positions, split_seed(cards, data, models),
                       fit_task=False)
    splits = {"valid": prepared.valid, **({"test": prepared.test} if prepared.test is not None else {})}
    each = {name: [predict_logits(backbone, m.adapter, m.head, split.ids, data.eval_batch_size, first["pooling"])
                   for m in members] for name, split in splits.items()}
    averaged = {name: average_logits(logits) for name, logits in each.items()}
    part = fit_blend(task, prepared.train, prepared.valid, averaged["valid"]) if lexical else None
    metrics = {name: {**split_metrics(task, averaged[name], split, part),
                      "members": [split_metrics(task, logits, split) for logits in each[name]]}
               for name, split in splits.items()}
    wall = round(time.perf_counter() - started, 1)
    card = {**{k: v for k, v in first.items() if k not in ("format_version", "training", "metrics", "lexical")},
            "ensemble": {"members": [{"path": str(m), "training": c.get("training"), "metrics": c.get("metrics")}
                                     for m, c in zip(models, cards)], "wall_time_s": wall},
            "metrics": metrics, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if part is not None:
        card["lexical"] = lexical_card(part, prepared)
    save_artifact(out, backbone, members[0].adapter, members[0].head, card, part,
                  [(m.adapter, m.head) for m in members[1:]])
    return {"out": str(Path(out)), "members": [str(m) for m in models], "metrics": metrics,
            "lexical_weight": part.weight if part is not None else None, "wall_time_s": wall}
