"""A LoRA adapter on the shared encoder that maps customer questions to their knowledge-base entry.

Contrastive training (InfoNCE) over the whole knowledge base: each step embeds a batch of questions
through the adapter, scores them against every entry's passage vector (from the base encoder, as the
retriever caches them), and the loss is cross-entropy of those cosine scores (over a temperature)
against the question's entry. Only the question side changes, so a step costs one small batch and
the knowledge base is never re-embedded. Validation follows recall@k of held-out questions.
Training runs through the same Lightning path as the tasks.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from torch.nn import functional as F

from .backbone import Backbone, lora_config
from .config import RetrievalSettings, TrainerSettings
from .data import tokenize
from .knowledge import Retriever
from .training import Prepared, Split, TaskData, TrainableModule, _fit_module

ADAPTER = "retrieval"


class RetrievalModule(TrainableModule):
    """Question batches, through the adapter, against every passage's fixed vector."""

    def __init__(self, backbone: Backbone, passages: torch.Tensor, pooling: str, temperature: float, k: int,
                 trainer: TrainerSettings) -> None:
        super().__init__(trainer)
        self.backbone, self.pooling, self.temperature, self.k = backbone, pooling, temperature, k
        self.register_buffer("passages", passages, persistent=False)
        self.hits: list[torch.Tensor] = []

    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        questions = F.normalize(self.backbone(batch["input_ids"], batch["attention_mask"], self.pooling), dim=-1)
        return questions @ self.passages.T

    def training_step(self, batch: dict[str, torch.Tensor], _: int) -> torch.Tensor:
        loss = F.cross_entropy(self.scores(batch) / self.temperature, batch["targets"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["targets"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], _: int) -> None:
        top = self.scores(batch).topk(min(self.k, len(self.passages)), dim=1).indices
        self.hits.append((top == batch["targets"][:, None]).any(dim=1).float())

    def on_validation_epoch_end(self) -> None:
        self.log(f"val/recall@{self.k}", torch.cat(self.hits).mean(), prog_bar=True)
        self.hits.clear()


def train_retrieval_adapter(retriever: Retriever, train: Sequence[tuple[str, str]], valid: Sequence[tuple[str, str]],
                            settings: RetrievalSettings, k: int, trainer: TrainerSettings,
                            work_dir: Path) -> dict[str, float | int]:
    """Add and train the adapter ``"retrieval"`` on ``retriever``'s backbone from (question, entry id)
    pairs (``trainer`` gives the device and step cap; ``settings`` the rest); checkpoints and logs go
    to ``work_dir``. Returns recall@``k`` on ``valid`` with the base encoder, and the training size."""
    L.seed_everything(trainer.seed, workers=True)  # the adapter's initial weights do not depend on what ran before
    backbone = retriever.backbone
    index = {entry.id: i for i, entry in enumerate(retriever.entries)}
    pad = backbone.tokenizer.pad_token_id

    def split(pairs: Sequence[tuple[str, str]]) -> Split:
        ids = tokenize(backbone.tokenizer, [[retriever.query_prefix + q for q, _ in pairs]], retriever.max_length)
        return Split(ids, [index[entry] for _, entry in pairs])

    prepared = Prepared(split(train), split(valid), None, None, retriever.max_length,
                        {"train_examples": len(train), "valid_examples": len(valid)})
    before = recall(retriever, valid, k)
    lora = settings.lora
    backbone.add_adapter(ADAPTER, lora_config(lora))
    trainer = dataclasses.replace(trainer, lr=settings.lr, max_epochs=settings.epochs, patience=settings.patience,
                                  monitor=None, val_check_interval=1.0)
    module = RetrievalModule(backbone, retriever.vectors, retriever.pooling, settings.temperature, k, trainer)
    datamodule = TaskData(prepared, pad, settings.batch_size, settings.batch_size, trainer.seed)
    fit, _ = _fit_module(module, datamodule, trainer, f"val/recall@{k}", work_dir)
    backbone.eval()
    return {"recall_before": before, "steps": fit.global_step, "train_questions": len(train),
            "valid_questions": len(valid)}


def recall(retriever: Retriever, pairs: Sequence[tuple[str, str]], k: int) -> float:
    """Share of (question, entry id) pairs whose entry is among the top ``k`` retrieved."""
    hits = retriever.search_many([q for q, _ in pairs], k)
    return sum(entry in {h.entry.id for h in found} for (_, entry), found in zip(pairs, hits)) / max(1, len(pairs))
