"""Ranking machinery shared by recommendation and search ranking: the item tower over a catalogue, scorers, losses,
the catalogue's top-k with exclusions, ranking metrics, and the Lightning module that trains a two-tower model.

    catalogue row ──features (FeaturePipeline) + text vectors──▶ ItemTable
    ItemTable rows ──ItemTower: id embedding + projected FusedEncoder(numeric ⊕ categorical ⊕ text)──▶ [n, d + 1]
    query (a user, a search query) ──the task's own tower──▶ [B, d]
    score = [q, 1] · [v, b]  (two-tower: item vectors cached, whole-catalogue top-k)
          | CrossScorer over [q; v; q ⊙ v] (mlp) or [q; v] (linear, σ(W[x_u; x_i] + b)) re-ranking the top candidates

Metrics follow the Microsoft Recommenders definitions: precision@k = hits / k, recall@k = hits / relevant,
nDCG@k with binary (or graded) gains, hit rate@k, MAP = the sum over hits in the top k of precision at the hit's rank,
divided by the number of relevant items; AUC is per query over all its candidates, then averaged.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import LengthGroupedBatches, collate
from .tabular import FusedEncoder, Inputs, mlp
from .training import TrainableModule

if TYPE_CHECKING:
    from .backbone import Backbone, Pooling
    from .config import TrainerSettings

Loss = Literal["bce", "bpr", "softmax"]
Scorer = Literal["dot", "mlp", "linear"]
Relevant = Mapping[int, float] | Sequence[int] | np.ndarray


# --- metrics ------------------------------------------------------------------------------------------------

def top_k(scores: torch.Tensor, k: int, exclude: Sequence[np.ndarray] | None = None) -> torch.Tensor:
    """Rows of the ``k`` highest scores of each query (best first), leaving out each query's ``exclude`` rows."""
    if exclude is not None:
        scores = scores.clone()
        for q, rows in enumerate(exclude):
            if len(rows):
                scores[q, torch.as_tensor(rows, dtype=torch.long)] = -torch.inf
    k = min(k, scores.shape[1])
    values, rows = scores.topk(k, dim=1)
    return rows.masked_fill(values == -torch.inf, -1)  # fewer candidates than k: -1 pads the list


def _gains(relevant: Relevant) -> dict[int, float]:
    if isinstance(relevant, Mapping):
        return {int(r): float(g) for r, g in relevant.items() if g > 0}
    return {int(r): 1.0 for r in relevant}


def ranking_metrics(top: Sequence[Sequence[int]] | np.ndarray | torch.Tensor, relevant: Sequence[Relevant],
                    k: int) -> dict[str, float]:
    """Hit rate, precision, recall, nDCG at ``k`` (torchmetrics retrieval metrics) and MAP, averaged over the queries
    that have a relevant item. ``top``: each query's ranked rows (-1: no item); ``relevant``: each query's relevant
    rows, or {row: gain} for graded relevance (nDCG uses the gains, the others count gain > 0 as relevant)."""
    from torchmetrics.retrieval import RetrievalHitRate, RetrievalNormalizedDCG, RetrievalPrecision, RetrievalRecall

    preds, targets, indexes, average_precision = [], [], [], []
    for q, (ranked, rel) in enumerate(zip(top, relevant)):
        gains = _gains(rel)
        if not gains:
            continue
        ranked = [int(r) for r in ranked[:k] if int(r) >= 0]
        # The ranked list gets scores k..1; relevant items outside it score 0.5, below all of them, so the retrieval
        # metrics see exactly this top k and every relevant item (for recall and the ideal DCG).
        rest = [r for r in gains if r not in set(ranked)]
        preds += [float(k - j) for j in range(len(ranked))] + [0.5] * len(rest)
        targets += [gains.get(r, 0.0) for r in ranked] + [gains[r] for r in rest]
        indexes += [len(average_precision)] * (len(ranked) + len(rest))
        hits = np.array([r in gains for r in ranked], dtype=np.float64)
        precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1) if len(hits) else hits
        average_precision.append(float((precision_at * hits).sum() / len(gains)))
    n = len(average_precision)
    if not n:
        return {"queries": 0}
    p, t, i = torch.tensor(preds), torch.tensor(targets), torch.tensor(indexes)
    binary = t > 0
    out = {"queries": n,
           f"hit_rate@{k}": RetrievalHitRate(top_k=k)(p, binary, indexes=i).item(),
           f"precision@{k}": RetrievalPrecision(top_k=k)(p, binary, indexes=i).item(),
           f"recall@{k}": RetrievalRecall(top_k=k)(p, binary, indexes=i).item(),
           f"ndcg@{k}": RetrievalNormalizedDCG(top_k=k)(p, t, indexes=i).item(),
           "map": float(np.mean(average_precision))}
    return out


def mean_auc(scores: torch.Tensor, relevant: Sequence[Relevant], exclude: Sequence[np.ndarray] | None = None) -> float:
    """Per-query AUC (a relevant candidate scored above an irrelevant one; ties count half) over the query's
    candidates (all rows but ``exclude``), averaged over queries with both relevant and irrelevant candidates."""
    from scipy.stats import rankdata

    s = scores.double().numpy().copy()
    excluded = np.zeros(s.shape, dtype=bool)
    for q, rows in enumerate(exclude or []):
        excluded[q, np.asarray(rows, dtype=np.int64)] = True
    s[excluded] = -np.inf  # below every candidate: candidates' ranks are shifted by the excluded count
    ranks = rankdata(s, axis=1)
    aucs = []
    for q, rel in enumerate(relevant):
        pos = np.array([r for r in _gains(rel) if not excluded[q, r]], dtype=np.int64)
        n_excluded = int(excluded[q].sum())
        n_neg = s.shape[1] - n_excluded - len(pos)
        if len(pos) and n_neg > 0:
            u = ranks[q, pos].sum() - n_excluded * len(pos) - len(pos) * (len(pos) + 1) / 2
            aucs.append(u / (len(pos) * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")


# --- losses -------------------------------------------------------------------------------------------------

def ranking_loss(kind: Loss, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """``positive`` [B] and ``negative`` [B, m] logits. ``bce``: binary cross-entropy, the positive labelled 1 and
    every negative 0 (pointwise); ``bpr``: -log σ(positive - negative) (pairwise, Rendle et al. 2009);
    ``softmax``: cross-entropy of the positive among itself and the negatives (listwise)."""
    if kind == "bce":
        logits = torch.cat([positive[:, None], negative], dim=1)
        targets = torch.zeros_like(logits)
        targets[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(logits, targets)
    if kind == "bpr":
        return -F.logsigmoid(positive[:, None] - negative).mean()
    if kind == "softmax":
        logits = torch.cat([positive[:, None], negative], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
    raise ValueError(f"unknown loss {kind!r}; use bce, bpr or softmax")


# --- the catalogue and the item tower -----------------------------------------------------------------------

@dataclass
class ItemTable:
    """Per catalogue row: the id index (0: unknown, e.g. an item with no training interaction), the numeric and
    categorical features, and the text fields, as vectors already pooled by the encoder (``text`` [N, T, H]) or as
    token ids (``token_ids``: per field, per row) when the task's adapter trains."""

    ids: torch.Tensor
    numeric: torch.Tensor
    categorical: torch.Tensor
    text: torch.Tensor | None = None
    token_ids: list[list[list[int]]] | None = None
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def inputs(self, rows: torch.Tensor, backbone: Backbone | None = None, pooling: Pooling = "mean") -> Inputs:
        """The FusedEncoder inputs of some rows; with token ids, the texts go through the backbone's active adapter."""
        text = self.text[rows] if self.text is not None else None
        if self.token_ids:
            index = rows.tolist()
            batch = collate([field[i] for i in index for field in self.token_ids], self.pad_id)
            device = next(backbone.parameters()).device
            vectors = backbone(batch["input_ids"].to(device), batch["attention_mask"].to(device), pooling)
            text = vectors.view(len(index), len(self.token_ids), -1)
        return {"numeric": self.numeric[rows], "categorical": self.categorical[rows], "text": text}


def zero_linear(inputs: int, outputs: int) -> nn.Linear:
    """A linear layer that starts at zero: features join the id embeddings (initialised small) without swamping
    them at first, and grow only as far as they help."""
    layer = nn.Linear(inputs, outputs)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ItemTower(nn.Module):
    """Catalogue rows -> [n, out]: an id embedding plus a linear map of the fused features (numeric ⊕ categorical
    embeddings ⊕ projected text vectors). Either part may be absent. ``id_dropout``: in training, that share of the
    rows is seen without its id (as an unknown item), so the features alone learn to place items with no history."""

    def __init__(self, n_ids: int, out: int, numeric: int = 0, cardinalities: Sequence[int] = (), texts: int = 0,
                 text_size: int = 0, text_dim: int = 64, max_embedding: int = 16, use_ids: bool = True,
                 id_dropout: float = 0.0) -> None:
        super().__init__()
        self.id_dropout = id_dropout
        self.ids = nn.Embedding(n_ids, out) if use_ids else None
        if self.ids is not None:
            nn.init.normal_(self.ids.weight, std=0.01)
        has_features = bool(numeric or len(cardinalities) or texts)
        self.fused = FusedEncoder(numeric, cardinalities, texts, text_size, text_dim, max_embedding) if has_features \
            else None
        self.content = zero_linear(self.fused.out_dim, out) if self.fused is not None else None
        if self.ids is None and self.fused is None:
            raise ValueError("an item tower needs ids or features")

    def forward(self, ids: torch.Tensor, inputs: Inputs) -> torch.Tensor:
        out = 0
        if self.ids is not None:
            if self.training and self.id_dropout:
                ids = ids.masked_fill(torch.rand(ids.shape, device=ids.device) < self.id_dropout, 0)
            out = self.ids(ids)
        if self.fused is not None:
            out = out + self.content(self.fused(inputs))
        return out


class CrossScorer(nn.Module):
    """A (query, item) pair's logit from both vectors: ``mlp`` over [q; v; q ⊙ v], or ``linear``, the logistic model
    σ(W[q; v] + b), which is a query term plus an item term and so ranks every query's items alike."""

    def __init__(self, kind: Literal["mlp", "linear"], dim: int, hidden: Sequence[int] = (128,),
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.kind = kind
        self.net = mlp([3 * dim, *hidden, 1], dropout) if kind == "mlp" else nn.Linear(2 * dim, 1)

    def forward(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q`` [..., d] and ``v`` [..., d] (broadcast) -> logits [...]."""
        q, v = torch.broadcast_tensors(q, v)
        x = torch.cat([q, v, q * v], dim=-1) if self.kind == "mlp" else torch.cat([q, v], dim=-1)
        return self.net(x).squeeze(-1)


def dot_scores(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Two-tower logits of queries [B, d] against items [n, d + 1] (the last column the item's bias): [B, n]."""
    return q @ v[:, :-1].T + v[:, -1]


def pair_logits(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Two-tower logits of queries [B, d] against their own items [B, m, d + 1]: [B, m]."""
    return (q[:, None, :] * v[..., :-1]).sum(-1) + v[..., -1]


def two_tower_loss(q: torch.Tensor, vectors: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor | None,
                   kind: Loss, cross: CrossScorer | None = None, cross_negative: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """The training loss of a batch: ``q`` [B, d] queries, ``vectors`` [n, d + 1] the items involved, ``positive``
    [B] and ``negative`` [B, m] indices into ``vectors`` (None: every item is a candidate, softmax only). A cross
    scorer adds its own pointwise BCE (pairwise with bpr) on the positive and ``cross_negative`` [B, m'] items."""
    if negative is None:
        if kind != "softmax":
            raise ValueError("negatives 'all' (the whole catalogue) goes with loss softmax")
        loss = F.cross_entropy(dot_scores(q, vectors), positive)
    else:
        loss = ranking_loss(kind, pair_logits(q, vectors[positive][:, None])[:, 0], pair_logits(q, vectors[negative]))
    if cross is not None:
        negative = cross_negative if cross_negative is not None else negative
        items = vectors[:, :-1]
        pos = cross(q, items[positive])
        neg = cross(q[:, None, :], items[negative])
        loss = loss + ranking_loss("bpr" if kind == "bpr" else "bce", pos, neg)
    return loss


def rerank(q: torch.Tensor, vectors: torch.Tensor, cross: CrossScorer | None, k: int, candidates: int | None,
           exclude: Sequence[np.ndarray] | None = None, chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [B, k], logits [B, k]): the two-tower top-k over the catalogue or, with a cross scorer, its top
    ``candidates`` (None: every item) re-ranked by the cross scorer, ``chunk`` queries at a time. Excluded rows never
    appear; -1 pads."""
    scores = dot_scores(q, vectors)
    if cross is None:
        rows = top_k(scores, k, exclude)
        return rows, _gather(scores, rows)
    pool = top_k(scores, candidates or scores.shape[1], exclude)
    logits = torch.cat([cross(q[i:i + chunk, None, :], vectors[:, :-1][pool[i:i + chunk].clamp(min=0)])
                        for i in range(0, len(q), chunk)]).masked_fill(pool < 0, -torch.inf)
    best = logits.topk(min(k, logits.shape[1]), dim=1)
    rows = pool.gather(1, best.indices)
    return rows.masked_fill(best.values == -torch.inf, -1), best.values


def _gather(scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return scores.gather(1, rows.clamp(min=0)).masked_fill(rows < 0, -torch.inf)


# --- text vectors, cached on disk ---------------------------------------------------------------------------

def frozen_text_vectors(backbone: Backbone, texts: dict[str, list[str]], max_length: int, pooling: Pooling,
                        batch_size: int = 128, cache: Path | None = None) -> torch.Tensor:
    """[n, T, H] vectors of every text field through the base encoder alone (no adapter), cached under ``cache``
    (default ``cache_dir()/text_vectors``) by the base's checksum, the settings and the texts."""
    from safetensors.torch import load_file, save_file

    from .artifact import base_checksum
    from .models import cache_dir
    from .predictor import embed
    from .tabular import tokenize_texts

    digest = hashlib.sha256(json.dumps([base_checksum(backbone.base_dir), max_length, pooling, texts],
                                       ensure_ascii=False).encode()).hexdigest()[:32]
    path = Path(cache if cache is not None else cache_dir() / "text_vectors") / f"{digest}.safetensors"
    if path.exists():
        return load_file(str(path))["vectors"]
    ids = tokenize_texts(backbone.tokenizer, texts, max_length)
    vectors = torch.stack([embed(backbone, None, field, batch_size, pooling) for field in ids], dim=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    save_file({"vectors": vectors.contiguous()}, str(partial))
    partial.replace(path)
    return vectors


# --- training -----------------------------------------------------------------------------------------------

class IndexData(L.LightningDataModule):
    """Training examples 0..n-1 in shuffled batches, turned into tensors by ``collate_train``; validation queries in
    order through ``collate_valid`` (none when ``n_valid`` is 0)."""

    def __init__(self, n_train: int, collate_train: Callable[[list[int]], dict[str, Any]], batch_size: int,
                 seed: int, n_valid: int = 0, collate_valid: Callable[[list[int]], dict[str, Any]] | None = None,
                 eval_batch_size: int = 256) -> None:
        super().__init__()
        self.n_train, self.collate_train, self.batch_size, self.seed = n_train, collate_train, batch_size, seed
        self.n_valid, self.collate_valid, self.eval_batch_size = n_valid, collate_valid, eval_batch_size

    def _loader(self, n: int, collate_fn: Callable, batch_size: int, shuffle: bool) -> torch.utils.data.DataLoader:
        batches = LengthGroupedBatches([0] * n, batch_size, shuffle=shuffle, seed=self.seed,
                                       num_replicas=self.trainer.world_size, rank=self.trainer.global_rank)
        return torch.utils.data.DataLoader(range(n), batch_sampler=batches, collate_fn=collate_fn)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.n_train, self.collate_train, self.batch_size, True)


class ValidatedIndexData(IndexData):
    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.n_valid, self.collate_valid, self.eval_batch_size, False)


class RankingModule(TrainableModule):
    """Trains a ranking model with Lightning. The model gives ``loss(batch, backbone)``; for validation,
    ``refresh(backbone)`` (item vectors, once per validation) and ``validation_top(batch, k)`` -> (top rows,
    relevant per query). Validation logs nDCG, hit rate, precision, recall at ``k`` and MAP (``val/ndcg@10`` ...).
    With a backbone, its active adapter trains with the model."""

    def __init__(self, model: nn.Module, settings: TrainerSettings, backbone: Backbone | None = None,
                 k: int = 10) -> None:
        super().__init__(settings)
        self.model, self.backbone, self.k = model, backbone, k
        self._top: list[np.ndarray] = []
        self._relevant: list[Any] = []

    def training_step(self, batch: dict[str, Any], _: int) -> torch.Tensor:
        loss = self.model.loss(batch, self.backbone)
        size = int(batch["size"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/epoch_loss", loss, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.model.refresh(self.backbone)

    def validation_step(self, batch: dict[str, Any], _: int) -> None:
        top, relevant = self.model.validation_top(batch, self.k, self.backbone)
        self._top += list(top.cpu().numpy())
        self._relevant += relevant

    def on_validation_epoch_end(self) -> None:
        metrics = ranking_metrics(self._top, self._relevant, self.k)
        self._top, self._relevant = [], []
        metrics.pop("queries", None)
        self.log_dict({f"val/{name}": value for name, value in metrics.items()}, prog_bar=True)


def evaluate_scores(scores: torch.Tensor | np.ndarray, relevant: Sequence[Relevant], k: int,
                    exclude: Sequence[np.ndarray] | None = None, chunk: int = 1024) -> dict[str, float]:
    """``ranking_metrics`` of the top ``k`` of a [queries, items] score matrix (``exclude``: each query's rows to
    leave out, e.g. its seen items) plus the per-query ``auc``, in chunks of queries."""
    scores = torch.as_tensor(scores)
    tops, aucs = [], []
    for start in range(0, len(scores), chunk):
        part = slice(start, start + chunk)
        skip = exclude[part] if exclude is not None else None
        tops += list(top_k(scores[part], k, skip).numpy())
        aucs.append((mean_auc(scores[part], [[r for r in _gains(x) if r >= 0] for x in relevant[part]], skip),
                     len(scores[part])))
    metrics = ranking_metrics(tops, relevant, k)
    known = [(a, n) for a, n in aucs if a == a]
    metrics["auc"] = float(sum(a * n for a, n in known) / sum(n for _, n in known)) if known else float("nan")
    return metrics
