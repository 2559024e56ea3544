"""Recommendation: scores (user, item) pairs and recommends items from a whole catalogue.

    ecomnlp train-reco --config configs/recommendation.yaml
    m = ecomnlp.load("runs/reco"); m.recommend("196", k=10); m.score("196", ["242", "302"])

    item  ──features (ids, attributes, templates -> text through the shared encoder)──▶ ItemTower ──▶ x_i (cached)
    user  ──features + the last items of their history (ids, features, text; 1/sqrt(n) sum)──▶ UserTower ──▶ x_u
    score = x_u · x_i + b_i (two-tower: whole-catalogue top-k, seen items excluded), optionally re-ranked by a
    cross scorer (MLP over [x_u; x_i; x_u ⊙ x_i], or the logistic σ(W[x_u; x_i] + b))

Losses: softmax over the catalogue (the default), BCE on observed pairs against sampled unseen items, or BPR.
A user unknown at training time (cold start) is described by the features and history passed in; an item with no
training interaction is placed by its features and text alone. Settings: ``tasks/ranking_settings.py``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ecomnlp.artifact import (RECO_KIND, atomic_dir, base_checksum, check_base, read_card,
                              write_card)
from ecomnlp.backbone import Backbone, lora_config
from ecomnlp.config import LoraSettings, TrainerSettings
from ecomnlp.data import DataError, choose_max_length
from ecomnlp.features import FeaturePipeline
from ecomnlp.interactions import (Histories, Interactions, NegativeSampler, as_ids, cold_items, read_interactions,
                                  split_per_user)
from ecomnlp.models import resolve
from ecomnlp.ranking import (CrossScorer, IndexData, ItemTable, ItemTower, RankingModule, ValidatedIndexData,
                             dot_scores, frozen_text_vectors, mean_auc, ranking_metrics, rerank, top_k,
                             two_tower_loss, zero_linear)
from ecomnlp.reco_baselines import interaction_matrix, popularity
from ecomnlp.tabular import FusedEncoder, Inputs, tokenize_texts
from ecomnlp.training import _fit_module, record_run

from .ranking_settings import RECO_TRAINER, RECOMMENDATION, RecoData, RecoNetwork  # noqa: F401

log = logging.getLogger(__name__)

USER, ITEM = "user", "item"  # the id columns of the user and item tables (categorical column 0 of each pipeline)
ITEM_FEATURES, USER_FEATURES = "item_features.json", "user_features.json"
MODEL_WEIGHTS, CATALOGUE, USERS = "model.safetensors", "catalogue.safetensors", "users.safetensors"
TASK = RECOMMENDATION


# --- the network --------------------------------------------------------------------------------------------

class UserTower(nn.Module):
    """x_u = Σ_j w_j h_j over the history items' input vectors (w = 1/sqrt(n)) + a projection of the user's
    features + (optionally) a user id embedding."""

    def __init__(self, dim: int, n_ids: int = 0, numeric: int = 0, cardinalities: Sequence[int] = (),
                 max_embedding: int = 16) -> None:
        super().__init__()
        self.dim = dim
        self.ids = nn.Embedding(n_ids, dim) if n_ids else None
        if self.ids is not None:
            nn.init.normal_(self.ids.weight, std=0.01)
        self.fused = FusedEncoder(numeric, cardinalities, max_embedding=max_embedding) \
            if numeric or len(cardinalities) else None
        self.content = zero_linear(self.fused.out_dim, dim) if self.fused is not None else None

    def forward(self, ids: torch.Tensor, inputs: Inputs, bag: dict[str, torch.Tensor] | None,
                history: torch.Tensor | None) -> torch.Tensor:
        out = torch.zeros(len(ids), self.dim, device=ids.device)
        if bag is not None and history is not None and len(bag["rows"]):
            out = out.index_add(0, bag["owner"], history[bag["rows"]] * bag["weight"][:, None])
        if self.ids is not None:
            out = out + self.ids(ids)
        if self.fused is not None:
            out = out + self.content(self.fused(inputs))
        return out


class RecoNet(nn.Module):
    """The item tower (x_i and its bias), the history items' input tower, the user tower and the cross scorer,
    built from the card's ``model`` entry."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        d, items, users = spec["dim"], spec["items"], spec["users"]
        common = dict(numeric=items["numeric"], cardinalities=items["cardinalities"], texts=items["texts"],
                      text_size=items["text_size"], text_dim=spec["text_dim"], max_embedding=spec["embedding_dim"])
        self.items = ItemTower(items["ids"], d + 1, use_ids=spec["item_ids"], id_dropout=spec["id_dropout"], **common)
        history_content = common if spec["history_features"] else {}
        self.history = ItemTower(items["ids"], d, use_ids=spec["history_ids"], **history_content) \
            if spec["history_ids"] or (spec["history_features"] and _has_features(items)) else None
        self.users = UserTower(d, users["ids"] if spec["user_ids"] else 0, users["numeric"], users["cardinalities"],
                               spec["embedding_dim"])
        self.cross = CrossScorer(spec["scorer"], d, spec["hidden"], spec["dropout"]) if spec["scorer"] != "dot" \
            else None


def _has_features(side: dict[str, Any]) -> bool:
    return bool(side["numeric"] or side["cardinalities"] or side["texts"])


# --- users, histories and batches ---------------------------------------------------------------------------

@dataclass
class UserTable:
    """Per user row: id index (0: unknown), numeric and categorical features (without the id)."""

    ids: torch.Tensor
    numeric: torch.Tensor
    categorical: torch.Tensor

    def inputs(self, rows: torch.Tensor) -> Inputs:
        return {"numeric": self.numeric[rows], "categorical": self.categorical[rows], "text": None}


def history_bag(histories: Sequence[np.ndarray], limit: int | None, keep: float = 1.0,
                rng: np.random.Generator | None = None, leave_out: Sequence[int] | None = None) -> dict[str, Any]:
    """Flat history rows, their owner (query index) and weights 1/sqrt(n), from each query's item rows (oldest
    first): the pair's own item left out, the last ``limit`` kept, then each kept with probability ``keep``."""
    rows, owner, weight = [], [], []
    for q, h in enumerate(histories):
        if leave_out is not None:
            h = h[h != leave_out[q]]
        if limit is not None:
            h = h[-limit:]
        if keep < 1.0 and len(h):
            h = h[rng.random(len(h)) < keep]
        rows.append(h)
        owner.append(np.full(len(h), q))
        weight.append(np.full(len(h), 1.0 / np.sqrt(max(len(h), 1)), dtype=np.float32))
    if not rows:
        return {"rows": torch.zeros(0, dtype=torch.long), "owner": torch.zeros(0, dtype=torch.long),
                "weight": torch.zeros(0)}
    return {"rows": torch.from_numpy(np.concatenate(rows).astype(np.int64)),
            "owner": torch.from_numpy(np.concatenate(owner).astype(np.int64)),
            "weight": torch.from_numpy(np.concatenate(weight))}


class RecoObjective(nn.Module):
    """What ``RankingModule`` trains: the network, with the catalogue, users and histories it reads."""

    def __init__(self, net: RecoNet, items: ItemTable, users: UserTable, trained: np.ndarray, network: RecoNetwork,
                 pooling: str = "mean") -> None:
        super().__init__()
        self.net, self.table, self.user_table, self.settings, self.pooling = net, items, users, network, pooling
        self.trained = torch.from_numpy(trained)  # catalogue rows with training interactions: the negatives' pool
        self.position = torch.full((len(items),), -1, dtype=torch.long)
        self.position[self.trained] = torch.arange(len(trained))
        self.vectors: torch.Tensor | None = None
        self.history_vectors: torch.Tensor | None = None

    def _towers(self, rows: torch.Tensor, backbone: Backbone | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids, inputs = self.table.ids[rows], self.table.inputs(rows, backbone, self.pooling)
        vectors = self.net.items(ids, inputs)
        history = self.net.history(ids, inputs) if self.net.history is not None else None
        return vectors, history

    def users(self, rows: torch.Tensor, bag: dict[str, torch.Tensor], history: torch.Tensor | None) -> torch.Tensor:
        return self.net.users(self.user_table.ids[rows], self.user_table.inputs(rows), bag, history)

    def loss(self, batch: dict[str, Any], backbone: Backbone | None) -> torch.Tensor:
        every = self.settings.negatives == "all"
        parts = [self.trained if every else batch["positive"], batch["history"]["rows"]]
        parts += [batch[k].flatten() for k in ("negative", "cross_negative") if batch.get(k) is not None]
        needed = torch.unique(torch.cat(parts))
        local = torch.full((len(self.table),), -1, dtype=torch.long)
        local[needed] = torch.arange(len(needed))
        vectors, history = self._towers(needed, backbone)
        bag = {**batch["history"], "rows": local[batch["history"]["rows"]]}
        q = self.users(batch["users"], bag, history)
        cross_negative = local[batch["cross_negative"]] if batch.get("cross_negative") is not None else None
        if every:
            targets = vectors[local[self.trained]]
            return two_tower_loss(q, targets, self.position[batch["positive"]], None, "softmax", self.net.cross,
                                  None if cross_negative is None else self.position[batch["cross_negative"]])
        return two_tower_loss(q, vectors, local[batch["positive"]], local[batch["negative"]], self.settings.loss,
                              self.net.cross, cross_negative)

    @torch.no_grad()
    def refresh(self, backbone: Backbone | None, chunk: int = 1024) -> None:
        """Every catalogue item's vector and history input vector, in eval mode."""
        was = self.net.training
        self.net.eval()
        parts = [self._towers(torch.arange(i, min(i + chunk, len(self.table))), backbone)
                 for i in range(0, len(self.table), chunk)]
        self.vectors = torch.cat([p[0] for p in parts])
        self.history_vectors = torch.cat([p[1] for p in parts]) if parts[0][1] is not None else None
        self.net.train(was)

    def validation_top(self, batch: dict[str, Any], k: int, backbone: Backbone | None
                       ) -> tuple[torch.Tensor, list[np.ndarray]]:
        q = self.users(batch["users"], batch["history"], self.history_vectors)
        rows, _ = rerank(q, self.vectors, self.net.cross, k, self.settings.rerank, batch["exclude"])
        return rows, batch["relevant"]


# --- the trained model --------------------------------------------------------------------------------------

class RecommendationModel:
    """A trained recommender: ``recommend``, ``score``, ``evaluate``, ``save``. Item vectors are computed once and
    cached; known users keep their features and history (training interactions) from training."""

    def __init__(self, net: RecoNet, items: FeaturePipeline, users: FeaturePipeline, card: dict[str, Any],
                 item_ids: list[str], vectors: torch.Tensor, history_vectors: torch.Tensor | None,
                 user_ids: list[str], user_table: UserTable, histories: Histories, backbone: Backbone | None = None,
                 base: str | None = None) -> None:
        self.net, self.item_pipeline, self.user_pipeline, self.card = net.eval(), items, users, card
        self.item_ids, self.vectors, self.history_vectors = list(item_ids), vectors, history_vectors
        self.user_ids, self.user_table, self.histories = list(user_ids), user_table, histories
        self._item_index = pd.Index(self.item_ids)
        self._user_index = pd.Index(self.user_ids)
        self._backbone, self._base = backbone, base

    # lookups
    def item_rows(self, items: Sequence[Any]) -> np.ndarray:
        """Catalogue rows of item ids (-1: not in the catalogue)."""
        return self._item_index.get_indexer(as_ids(items))

    def user_row(self, user: Any) -> int:
        """The user's row, -1 for a user unknown at training time."""
        return int(self._user_index.get_indexer(as_ids([user]))[0]) if user is not None else -1

    @property
    def history_limit(self) -> int | None:
        return self.card["model"]["history"]

    def seen(self, user: Any) -> list[str]:
        """The items a known user interacted with in training (oldest first); [] for an unknown user."""
        row = self.user_row(user)
        return [self.item_ids[i] for i in self.histories.of(row)] if row >= 0 else []

    # the user side
    def _user_inputs(self, users: Sequence[Any], histories: Sequence[Sequence[Any] | None] | None,
                     features: Sequence[Mapping[str, Any] | None] | None) -> tuple[torch.Tensor, list[np.ndarray]]:
        """User vectors [B, d] and each user's seen rows (to exclude)."""
        n = len(users)
        rows = [self.user_row(u) for u in users]
        histories = list(histories) if histories is not None else [None] * n
        features = list(features) if features is not None else [None] * n
        ids = torch.zeros(n, dtype=torch.long)
        numeric = torch.zeros(n, self.user_table.numeric.shape[1])
        categorical = torch.zeros(n, self.user_table.categorical.shape[1], dtype=torch.long)
        fresh = [i for i in range(n) if rows[i] < 0 or features[i] is not None]
        known = [i for i in range(n) if i not in set(fresh)]
        if known:
            r = torch.tensor([rows[i] for i in known])
            ids[known], numeric[known], categorical[known] = (self.user_table.ids[r], self.user_table.numeric[r],
                                                              self.user_table.categorical[r])
        if fresh:  # unknown users, or known ones with new features: through the user pipeline
            records = [{**(features[i] or {}), USER: users[i] if rows[i] >= 0 else None} for i in fresh]
            frame = pd.DataFrame.from_records(records)
            for c in _pipeline_columns(self.user_pipeline):
                if c not in frame.columns:
                    frame[c] = None
            f = self.user_pipeline.transform(frame)
            ids[fresh], numeric[fresh], categorical[fresh] = f.categorical[:, 0], f.numeric, f.categorical[:, 1:]
        item_rows = []
        for i in range(n):
            if histories[i] is not None:
                given = self.item_rows(histories[i])
                if (given < 0).any():
                    log.warning("user %r: %d history item(s) not in the catalogue are ignored", users[i],
                                int((given < 0).sum()))
                item_rows.append(given[given >= 0].astype(np.int64))
            else:
                item_rows.append(self.histories.of(rows[i]) if rows[i] >= 0 else np.zeros(0, dtype=np.int64))
        bag = history_bag(item_rows, self.history_limit)
        inputs = {"numeric": numeric, "categorical": categorical, "text": None}
        with torch.inference_mode():
            q = self.net.users(ids, inputs, bag, self.history_vectors)
        return q, item_rows

    def user_vectors(self, users: Sequence[Any], histories: Sequence[Sequence[Any] | None] | None = None,
                     features: Sequence[Mapping[str, Any] | None] | None = None) -> torch.Tensor:
        return self._user_inputs(users, histories, features)[0]

    # scoring and recommending
    def recommend(self, user: Any = None, k: int = 10, history: Sequence[Any] | None = None,
                  features: Mapping[str, Any] | None = None, exclude_seen: bool = True,
                  exclude: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The ``k`` best items for one user, best first: ``[{"item", "score"}]``.

        A user unknown at training time (or ``user=None``) is described by ``history`` (item ids, oldest first)
        and ``features`` (their attributes, as in the users file); either may be empty. For a known user, a given
        history or features replace the stored ones. Items the user has seen (training history or ``history``)
        and ``exclude`` are left out.
        """
        return self.recommend_many([user], k, [history] if history is not None else None,
                                   [features] if features is not None else None, exclude_seen, [exclude])[0]

    def recommend_many(self, users: Sequence[Any], k: int = 10,
                       histories: Sequence[Sequence[Any] | None] | None = None,
                       features: Sequence[Mapping[str, Any] | None] | None = None, exclude_seen: bool = True,
                       exclude: Sequence[Sequence[Any]] | None = None) -> list[list[dict[str, Any]]]:
        """``recommend`` for several users at once (one matrix product over the cached item vectors)."""
        q, seen = self._user_inputs(users, histories, features)
        skip = []
        for i in range(len(users)):
            rows = seen[i] if exclude_seen else np.zeros(0, dtype=np.int64)
            if exclude is not None and len(exclude[i]):
                extra = self.item_rows(exclude[i])
                rows = np.concatenate([rows, extra[extra >= 0]])
            skip.append(rows)
        with torch.inference_mode():
            rows, logits = rerank(q, self.vectors, self.net.cross, k, self.card["model"]["rerank"], skip)
            probability = self._probability(q, logits, rows)
        return [[{"item": self.item_ids[r], "score": float(p)} for r, p in zip(rr.tolist(), pp.tolist()) if r >= 0]
                for rr, pp in zip(rows, probability)]

    def _probability(self, q: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Probabilities of these logits: σ(logit) (BCE, BPR, a cross scorer) or, for the softmax loss, the softmax
        over the catalogue: the probability that the user's next item is this one."""
        if self.net.cross is not None or self.card["model"]["loss"] != "softmax":
            return torch.sigmoid(logits)
        normaliser = torch.logsumexp(dot_scores(q, self.vectors), dim=1, keepdim=True)
        return torch.exp(logits - normaliser).masked_fill(rows < 0, 0.0)

    def score(self, user: Any, items: Sequence[Any], history: Sequence[Any] | None = None,
              features: Mapping[str, Any] | None = None) -> np.ndarray:
        """The probability of an interaction for each (user, item) pair (see ``card["probability"]``); NaN for an
        item not in the catalogue."""
        q, _ = self._user_inputs([user], [history] if history is not None else None,
                                 [features] if features is not None else None)
        rows = self.item_rows(items)
        found = torch.from_numpy(np.where(rows >= 0, rows, 0))
        with torch.inference_mode():
            v = self.vectors[found]
            if self.net.cross is not None:
                logits = self.net.cross(q, v[:, :-1])
            else:
                logits = v[:, :-1] @ q[0] + v[:, -1]
            p = self._probability(q, logits[None], found[None])[0].double().numpy()
        return np.where(rows >= 0, p, np.nan)

    # new items
    def add_items(self, items: pd.DataFrame | Sequence[Mapping[str, Any]]) -> None:
        """Add items (an id column ``item`` plus their attributes) to the catalogue, placed by their features and
        text alone; an id already in the catalogue is an error. Loads the text encoder if the items have text."""
        frame = pd.DataFrame.from_records(items) if not isinstance(items, pd.DataFrame) else items.copy()
        if ITEM not in frame.columns:
            raise DataError(f"new items need an '{ITEM}' id column; got {list(frame.columns)}")
        ids = as_ids(frame[ITEM])
        missing = [i + 1 for i, v in enumerate(ids) if v is None]
        if missing:
            raise DataError(f"new item {missing[0]}: no id ({len(missing)} such item(s))")
        known = set(self.item_ids)
        clash = [i for i in ids if i in known]
        if clash:
            raise DataError(f"items already in the catalogue: {clash[:5]}")
        twice = sorted(i for i, n in Counter(ids).items() if n > 1)
        if twice:
            raise DataError(f"new items with the same id: {twice[:5]}")
        for c in _pipeline_columns(self.item_pipeline):
            if c not in frame.columns:
                frame[c] = None
        frame[ITEM] = None  # no trained id: the features and text alone
        table = _item_table(self.item_pipeline.transform(frame), self._text_encoder(), self.card)
        with torch.inference_mode():
            rows = torch.arange(len(table))
            ids_, inputs = table.ids, table.inputs(rows, self._backbone, self.card["pooling"])
            self.vectors = torch.cat([self.vectors, self.net.items(ids_, inputs)])
            if self.history_vectors is not None:
                self.history_vectors = torch.cat([self.history_vectors, self.net.history(ids_, inputs)])
        self.item_ids += list(ids)
        self._item_index = pd.Index(self.item_ids)

    def _text_encoder(self) -> Backbone | None:
        """The shared encoder (with the task's adapter when it has one), loaded on first use; None without text."""
        if not self.card.get("text_fields"):
            return None
        if self._backbone is None:
            backbone = Backbone(resolve(self._base or _recorded_base(self.card)))
            check_base(self.card, self.card.get("path", "this model"), backbone.base_dir)
            if self.card["model"]["text"] == "adapter":
                backbone.load_adapter(TASK, self.card["path"])
            self._backbone = backbone.eval()
        return self._backbone

    # evaluation
    def evaluate(self, interactions: pd.DataFrame, k: int = 10, candidates: Sequence[Any] | None = None,
                 batch_size: int = 256, item_scores: np.ndarray | None = None) -> dict[str, Any]:
        """Ranking metrics on held-out interactions (columns ``user``, ``item``): for every user with at least one,
        the catalogue minus the user's training items (or only ``candidates``) is ranked; hit rate, precision,
        recall, nDCG at ``k``, MAP, and the per-user AUC of the final scores over all candidates.

        ``item_scores``: one score per catalogue item, the same for every user (e.g. ``popularity()``), ranked
        instead of the model's scores: a baseline measured on exactly the same users, exclusions and relevant items.
        """
        frame = interactions.assign(user=as_ids(interactions[USER]), item=as_ids(interactions[ITEM]))
        users = list(dict.fromkeys(frame[USER]))
        groups = frame.groupby(USER, sort=False)[ITEM].apply(list)
        allowed = None
        if candidates is not None:
            allowed = np.zeros(len(self.item_ids), dtype=bool)
            rows = self.item_rows(list(candidates))
            allowed[rows[rows >= 0]] = True
        tops, relevant, aucs = [], [], []
        for start in range(0, len(users), batch_size):
            part = users[start:start + batch_size]
            q, seen = self._user_inputs(part, None, None)
            skip = [np.union1d(s, np.flatnonzero(~allowed)) if allowed is not None else s for s in seen]
            rel = []
            for u in part:
                r = self.item_rows(groups[u])
                missing = -2 - np.arange(int((r < 0).sum()))  # not in the catalogue: relevant, never ranked
                rel.append(np.concatenate([r[r >= 0], missing]))
            with torch.inference_mode():
                if item_scores is None:
                    rows, _ = rerank(q, self.vectors, self.net.cross, k, self.card["model"]["rerank"], skip)
                    final = self._final_scores(q)
                else:
                    final = torch.as_tensor(item_scores, dtype=torch.float32).expand(len(part), -1)
                    rows = top_k(final, k, skip)
            tops += list(rows.numpy())
            relevant += rel
            aucs.append((mean_auc(final, [x[x >= 0] for x in rel], skip), len(part)))
        metrics = ranking_metrics(tops, relevant, k)
        valid = [(a, n) for a, n in aucs if a == a]
        metrics["auc"] = float(sum(a * n for a, n in valid) / sum(n for _, n in valid)) if valid else float("nan")
        metrics["users"] = len(users)
        return metrics

    def popularity(self) -> np.ndarray:
        """The most-popular baseline (``reco_baselines.popularity``): each catalogue item's number of users who
        interacted with it in the known (training) interactions."""
        users = np.repeat(np.arange(len(self.histories)), self.histories.lengths())
        x = interaction_matrix(users, self.histories.items, len(self.histories), len(self.item_ids))
        return popularity(x)[0]

    def _final_scores(self, q: torch.Tensor) -> torch.Tensor:
        """[B, N] scores of every catalogue item by the model's final scorer (the cross scorer when there is one)."""
        if self.net.cross is None:
            return dot_scores(q, self.vectors)
        items = self.vectors[:, :-1]
        return torch.stack([self.net.cross(x[None], items) for x in q])

    # saving
    def save(self, out: str | Path) -> Path:
        """Write the task directory atomically."""
        with atomic_dir(out) as tmp:
            self.item_pipeline.save(tmp / ITEM_FEATURES)
            self.user_pipeline.save(tmp / USER_FEATURES)
            save_file({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()},
                      str(tmp / MODEL_WEIGHTS))
            tensors = {"vectors": self.vectors.contiguous()}
            if self.history_vectors is not None:
                tensors["history_vectors"] = self.history_vectors.contiguous()
            save_file(tensors, str(tmp / CATALOGUE), metadata={"items": json.dumps(self.item_ids, ensure_ascii=False)})
            users = {"indptr": torch.from_numpy(self.histories.indptr), "items": torch.from_numpy(self.histories.items),
                     "ids": self.user_table.ids.contiguous(), "numeric": self.user_table.numeric.contiguous(),
                     "categorical": self.user_table.categorical.contiguous()}
            save_file(users, str(tmp / USERS), metadata={"users": json.dumps(self.user_ids, ensure_ascii=False)})
            if self.card.get("lora"):  # the adapter (loaded from the source directory if this model was loaded)
                self._text_encoder().save_adapter(TASK, tmp)
            card = {k: v for k, v in self.card.items() if k != "path"}
            write_card(tmp, card)
        return Path(out)

    def __repr__(self) -> str:
        m = self.card["model"]
        return (f"RecommendationModel(items={len(self.item_ids)}, users={len(self.user_ids)}, scorer={m['scorer']!r}, "
                f"loss={m['loss']!r})")


def _pipeline_columns(pipeline: FeaturePipeline) -> list[str]:
    from ecomnlp.tabular import input_columns

    return input_columns(pipeline)


def _recorded_base(card: dict[str, Any]) -> str:
    recorded = card["base_model"]
    return recorded["path"] if Path(recorded["path"]).is_dir() else recorded["name"]


def load_recommendation(path: str | Path, base: str | None = None, device: str = "cpu") -> RecommendationModel:
    """A recommendation task directory. The text encoder is loaded only when new items with text are added."""
    path = Path(path)
    card = read_card(path)
    net = RecoNet(card["model"])
    net.load_state_dict(load_file(str(path / MODEL_WEIGHTS)))
    from safetensors import safe_open

    with safe_open(str(path / CATALOGUE), "pt") as f:
        item_ids = json.loads(f.metadata()["items"])
    with safe_open(str(path / USERS), "pt") as f:
        user_ids = json.loads(f.metadata()["users"])
    catalogue, users = load_file(str(path / CATALOGUE)), load_file(str(path / USERS))
    histories = Histories(users["indptr"].numpy(), users["items"].numpy())
    table = UserTable(users["ids"], users["numeric"], users["categorical"])
    card["path"] = str(path)
    return RecommendationModel(net.to(device), FeaturePipeline.load(path / ITEM_FEATURES),
                               FeaturePipeline.load(path / USER_FEATURES), card, item_ids, catalogue["vectors"],
                               catalogue.get("history_vectors"), user_ids, table, histories, base=base)


# --- training ------------------------------------------------------------------------------------------------

@dataclass
class RecoSplits:
    """The interactions read, split: train / valid / test frames (columns user, item[, rating, time]), the cold
    items (held out of training entirely) and where each split came from."""

    data: Interactions
    frames: dict[str, pd.DataFrame]
    cold: set[str]
    where: dict[str, str]


def load_reco_splits(data: RecoData) -> RecoSplits:
    """Read the files and split them as ``data`` says (the test first, then validation out of the rest)."""
    d = read_interactions(data.interactions, data.users, data.items, data.columns, data.min_rating)
    frame, where = d.frame, {"train": data.interactions}
    if data.test:
        test = read_interactions(data.test, columns=data.columns, min_rating=data.min_rating).frame
        where["test"] = data.test
    elif data.test_fraction:
        frame, test = split_per_user(frame, data.test_fraction, data.split, data.split_seed)
        where["test"] = f"{data.split} {data.test_fraction:.0%} of each user's interactions"
    else:
        test = None
    cold: set[str] = set()
    if data.cold_items:
        cold = cold_items(d.frame, data.cold_items, data.split_seed)
        is_cold = frame[ITEM].isin(cold)
        test = pd.concat([test, frame[is_cold]]) if test is not None else frame[is_cold]
        frame = frame[~is_cold]
        where["test"] = where.get("test", "") + f" + every interaction with the {len(cold)} cold items"
    frames = {"train": frame}
    if data.valid_fraction:
        frames["train"], frames["valid"] = split_per_user(frame, data.valid_fraction, data.split, data.split_seed + 1)
        where["valid"] = f"{data.split} {data.valid_fraction:.0%} of each user's other interactions"
    if test is not None:
        frames["test"] = test
    return RecoSplits(d, frames, cold, where)


def _feature_spec(features: Mapping[str, Any] | None, id_column: str) -> dict[str, Any]:
    """The user's spec with the id column first among the categorical columns."""
    spec = {k: (dict(v) if isinstance(v, Mapping) else {c: {} for c in v}) if k != "crosses" else list(v)
            for k, v in (features or {}).items()}
    if id_column in spec.get("categorical", {}):
        raise ValueError(f"features: '{id_column}' is the id column; it is always a feature")
    spec["categorical"] = {id_column: {}, **spec.get("categorical", {})}
    return spec


def _fit_pipeline(spec: dict[str, Any], table: pd.DataFrame, id_column: str, known: set[str]) -> FeaturePipeline:
    """Fitted on the whole table (side information), the id vocabulary only on ids with training interactions."""
    frame = table.copy()
    frame[id_column] = frame[id_column].where(frame[id_column].isin(known), None)
    return FeaturePipeline(spec).fit(frame)


def _item_table(features: Any, backbone: Backbone | None, card: dict[str, Any], text: torch.Tensor | None = None,
                token_ids: list[list[list[int]]] | None = None) -> ItemTable:
    ids, categorical = features.categorical[:, 0], features.categorical[:, 1:]
    if features.texts and text is None and token_ids is None:
        if card["model"]["text"] == "adapter":
            token_ids = tokenize_texts(backbone.tokenizer, features.texts, card["max_length"])
        else:
            text = frozen_text_vectors(backbone, features.texts, card["max_length"], card["pooling"])
    pad = backbone.tokenizer.pad_token_id if backbone is not None else 0
    return ItemTable(ids, features.numeric, categorical, text, token_ids, pad)


class _Batches:
    """Training and validation batches (collate functions over example indices)."""

    def __init__(self, pairs: tuple[np.ndarray, np.ndarray], histories: Histories, sampler: NegativeSampler,
                 network: RecoNetwork, valid_users: np.ndarray | None = None,
                 valid_relevant: list[np.ndarray] | None = None) -> None:
        self.users, self.items = pairs
        self.histories, self.sampler, self.network = histories, sampler, network
        self.valid_users, self.valid_relevant = valid_users, valid_relevant

    def train(self, index: list[int]) -> dict[str, Any]:
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        users, items = self.users[index], self.items[index]
        n = self.network
        batch: dict[str, Any] = {
            "size": len(index), "users": torch.from_numpy(users), "positive": torch.from_numpy(items),
            "history": history_bag([self.histories.of(u) for u in users], n.history, n.history_keep, rng, items),
            "negative": None, "cross_negative": None}
        if n.negatives != "all":
            batch["negative"] = torch.from_numpy(self.sampler(users, n.negatives, rng))
        if n.scorer != "dot":
            batch["cross_negative"] = torch.from_numpy(self.sampler(users, n.cross_negatives, rng))
        return batch

    def valid(self, index: list[int]) -> dict[str, Any]:
        users = self.valid_users[index]
        return {"size": len(index), "users": torch.from_numpy(users),
                "history": history_bag([self.histories.of(u) for u in users], self.network.history),
                "exclude": [self.histories.of(u) for u in users], "relevant": [self.valid_relevant[i] for i in index]}


def _rows(index: pd.Index, ids: pd.Series) -> np.ndarray:
    rows = index.get_indexer(ids)
    if (rows < 0).any():
        raise DataError(f"ids not found: {list(ids[rows < 0][:5])}")
    return rows.astype(np.int64)


def fit_recommendation(
    data: RecoData,
    features: dict[str, Any] | None = None,
    model: str = "minilm-l6",
    network: RecoNetwork = RecoNetwork(),
    lora: LoraSettings = LoraSettings(),
    trainer: TrainerSettings = RECO_TRAINER,
    pooling: Literal["mean", "cls"] = "mean",
    work_dir: str | Path = "runs/reco",
    k: int = 10,
    splits: RecoSplits | None = None,
) -> tuple[RecommendationModel, dict[str, Any]]:
    """Train a recommender in memory: (the model, a JSON-able summary). See ``train_recommendation``."""
    started = time.perf_counter()
    L.seed_everything(trainer.seed, workers=True)
    features = dict(features or {})
    unknown = set(features) - {"users", "items"}
    if unknown:
        raise ValueError(f"features: unknown section(s) {sorted(unknown)}; use users and items (each a "
                         "FeaturePipeline spec)")
    if network.negatives == "all" and network.loss != "softmax":
        raise ValueError("negatives 'all' (the whole catalogue) goes with loss softmax")
    splits = splits or load_reco_splits(data)
    frames = splits.frames
    train = frames["train"]
    items_table, users_table = splits.data.items, splits.data.users
    item_spec, user_spec = _feature_spec(features.get("items"), ITEM), _feature_spec(features.get("users"), USER)
    item_pipeline = _fit_pipeline(item_spec, items_table, ITEM, set(train[ITEM]))
    user_pipeline = _fit_pipeline(user_spec, users_table, USER, set(train[USER]))
    item_features, user_features = item_pipeline.transform(items_table), user_pipeline.transform(users_table)
    texts = list(item_pipeline.spec["templates"])
    card: dict[str, Any] = {
        "task": TASK, "kind": RECO_KIND, "text_fields": texts, "pooling": pooling, "max_length": None,
        "columns": data.columns, "probability": None,
    }
    backbone = None
    if texts:
        base_dir = resolve(model)
        backbone = Backbone(base_dir)
        limit = backbone.max_positions
        lengths = [len(x) for f in tokenize_texts(backbone.tokenizer, item_features.texts, limit) for x in f]
        card["max_length"] = data.max_length or choose_max_length(lengths, 98.0, limit)
        card["base_model"] = {"name": model, "path": str(base_dir), "checksum": base_checksum(base_dir)}
        if network.text == "adapter":
            card["lora"] = dataclasses.asdict(lora)
            backbone.add_adapter(TASK, lora_config(lora))
    card["model"] = {
        **dataclasses.asdict(network),
        "items": {"ids": item_pipeline.cardinalities[0], "numeric": len(item_pipeline.numeric_names),
                  "cardinalities": item_pipeline.cardinalities[1:], "texts": len(texts),
                  "text_size": backbone.hidden_size if backbone else 0},
        "users": {"ids": user_pipeline.cardinalities[0], "numeric": len(user_pipeline.numeric_names),
                  "cardinalities": user_pipeline.cardinalities[1:]},
    }
    card["probability"] = ("sigmoid of the cross scorer's logit" if network.scorer != "dot" else
                           "softmax over the catalogue" if network.loss == "softmax" else "sigmoid of the logit")
    table = _item_table(item_features, backbone, card)
    user_table = UserTable(user_features.categorical[:, 0], user_features.numeric, user_features.categorical[:, 1:])

    item_index, user_index = pd.Index(items_table[ITEM]), pd.Index(users_table[USER])
    n_users, n_items = len(user_index), len(item_index)

    def history_of(frame: pd.DataFrame) -> Histories:
        return Histories.build(_rows(user_index, frame[USER]), _rows(item_index, frame[ITEM]), n_users,
                               frame["time"].to_numpy() if "time" in frame.columns else None)

    histories = history_of(train)
    pairs = (_rows(user_index, train[USER]), _rows(item_index, train[ITEM]))
    trained = np.unique(pairs[1])
    sampler = NegativeSampler(trained, histories.keys(n_items), n_items)
    valid_users = valid_relevant = None
    if "valid" in frames:
        grouped = frames["valid"].groupby(USER, sort=False)[ITEM].apply(list)
        valid_users = _rows(user_index, pd.Series(grouped.index))
        valid_relevant = [_rows(item_index, pd.Series(v)) for v in grouped]
    batches = _Batches(pairs, histories, sampler, network, valid_users, valid_relevant)

    net = RecoNet(card["model"])
    objective = RecoObjective(net, table, user_table, trained, network, pooling)
    has_valid = valid_users is not None and len(valid_users) > 0
    module = RankingModule(objective, trainer, backbone if network.text == "adapter" and texts else None, k)
    if has_valid:
        datamodule = ValidatedIndexData(len(pairs[0]), batches.train, data.batch_size, trainer.seed,
                                        len(valid_users), batches.valid, data.eval_batch_size)
        monitor = trainer.monitor or f"val/ndcg@{k}"
        direction = "min" if monitor.endswith("loss") else "max"
    else:
        datamodule = IndexData(len(pairs[0]), batches.train, data.batch_size, trainer.seed)
        monitor, direction = "train/epoch_loss", "min"
    fit, best = _fit_module(module, datamodule, trainer, monitor, Path(work_dir), mode=direction)
    train_wall = round(time.perf_counter() - started, 1)

    objective.refresh(module.backbone)
    known = pd.concat([train, frames["valid"]]) if "valid" in frames else train
    recommender = RecommendationModel(net, item_pipeline, user_pipeline, card, list(item_index), objective.vectors,
                                      objective.history_vectors, list(user_index), user_table, history_of(known),
                                      backbone)
    metrics = {}
    if "valid" in frames:  # validation: ranked against the training items only
        validating = RecommendationModel(net, item_pipeline, user_pipeline, card, list(item_index),
                                         objective.vectors, objective.history_vectors, list(user_index), user_table,
                                         histories, backbone)
        metrics["valid"] = validating.evaluate(frames["valid"], k)
    if "test" in frames:
        metrics["test"] = recommender.evaluate(frames["test"], k)
        if splits.cold:
            cold_test = frames["test"][frames["test"][ITEM].isin(splits.cold)]
            metrics["test_cold_items"] = recommender.evaluate(cold_test, k)
            metrics["test_cold_items_among_cold"] = recommender.evaluate(cold_test, k, candidates=sorted(splits.cold))
    stats = {name: {"interactions": len(f), "users": int(f[USER].nunique()), "items": int(f[ITEM].nunique()),
                    "source": splits.where.get(name)} for name, f in frames.items()}
    summary = record_run(
        card, work_dir, fit, best, trainer, data.batch_size, started, train_wall, metrics, k, stats,
        catalogue=n_items, users=n_users, cold_items=len(splits.cold), trained_items=int(len(trained)),
        monitor=monitor, split_seed=data.split_seed,
        features={"items": {"numeric": item_pipeline.numeric_names, "categorical": item_pipeline.categorical_names,
                            "texts": texts},
                  "users": {"numeric": user_pipeline.numeric_names, "categorical": user_pipeline.categorical_names}})
    return recommender, summary


def train_recommendation(
    data: RecoData,
    out: str,
    features: dict[str, Any] | None = None,
    model: str = "minilm-l6",
    network: RecoNetwork = RecoNetwork(),
    lora: LoraSettings = LoraSettings(),
    trainer: TrainerSettings = RECO_TRAINER,
    pooling: Literal["mean", "cls"] = "mean",
    k: int = 10,
) -> dict[str, Any]:
    """Train a recommender and save the task directory ``out`` (``ecomnlp.load(out)`` gives a
    ``RecommendationModel``).

    ``features``: ``{users: <FeaturePipeline spec>, items: <spec>}``; the items' templates are their text, encoded
    by ``model`` (frozen and cached, or through the task's LoRA adapter with ``network.text: adapter``); without
    templates no encoder is loaded. The test metrics (hit rate, precision, recall, nDCG at ``k``, MAP, AUC) go
    into the card.
    """
    recommender, summary = fit_recommendation(data, features, model, network, lora, trainer, pooling, out, k)
    recommender.save(out)
    return summary
