"""Adapter composition: one task's adapters (e.g. two shops' domains) merged with weights.

peft's ``add_weighted_adapter`` combines the LoRA updates (``cat`` keeps the weighted sum of the
updates exact, at the cost of a rank equal to the sum of the ranks); the task heads are averaged
with the same weights, normalised to sum to one.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .artifact import read_card, save_artifact
from .predictor import attach, backbone_for


def merge(models: Sequence[str], weights: Sequence[float], out: str, combination: str = "cat") -> Path:
    """Merge trained directories of one task into a new task directory ``out``."""
    if len(models) < 2 or len(models) != len(weights):
        raise ValueError("give at least two task directories and one weight per directory")
    cards = [read_card(m) for m in models]
    first = cards[0]
    for path, card in zip(models, cards):
        if card.get("ensemble"):
            raise ValueError(f"{path} is an ensemble: merge its members' own task directories")
    for path, card in zip(models[1:], cards[1:]):
        for key in ("task", "pooling"):
            if card[key] != first[key]:
                raise ValueError(f"{path}: {key} {card[key]!r} differs from {models[0]}'s {first[key]!r}")
        if card["task_state"].get("labels") != first["task_state"].get("labels"):
            raise ValueError(f"{path}: labels differ from {models[0]}'s; only one task's domains can be merged")
    backbone = backbone_for(models[0], None, "cpu")
    parts = [attach(backbone, path, f"source{i}") for i, path in enumerate(models)]
    name = first["task"]
    backbone.add_weighted_adapter([p.adapter for p in parts], list(weights), name, combination)
    total = float(sum(weights))
    head = parts[0].task.build_head(backbone.hidden_size)
    head.load_state_dict({k: sum(w / total * p.head.state_dict()[k] for p, w in zip(parts, weights))
                          for k in head.state_dict()})
    card: dict[str, Any] = {
        **{k: v for k, v in first.items() if k not in ("training", "metrics", "format_version", "lexical")},
        "lora": {**first["lora"], "merged": combination},
        "merged_from": [{"path": str(m), "weight": w} for m, w in zip(models, weights)],
        "metrics": {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with torch.no_grad():
        return save_artifact(out, backbone, name, head, card)
