"""Search ranking: (query, product) -> a relevance score; ``rank(query, k)`` over a whole catalogue.

    ecomnlp train-search --config configs/search_ranking.yaml
    m = ecomnlp.load("runs/search"); m.rank("wireless earbuds", k=10); m.score("wireless earbuds", ["B01", "B02"])

    query ──shared encoder (the task's LoRA adapter, or frozen)──▶ MLP ──▶ x_q
    product ──features (attributes, templates -> text through the same encoder)──▶ ItemTower ──▶ x_p (cached)
    score = x_q · x_p + b_p (two-tower: whole-catalogue top-k), optionally re-ranked by a cross scorer

The same machinery as recommendation (``ecomnlp.ranking``): pointwise (BCE: relevant products against judged
irrelevant and sampled ones), pairwise (BPR) or softmax losses; graded relevance for nDCG. Settings:
``tasks/ranking_settings.py``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ecomnlp.artifact import SEARCH_KIND, atomic_dir, base_checksum, check_base, read_card, write_card
from ecomnlp.backbone import Backbone, lora_config
from ecomnlp.config import LoraSettings, TrainerSettings
from ecomnlp.data import DataError, choose_max_length, collate, tokenize
from ecomnlp.features import FeaturePipeline
from ecomnlp.interactions import NegativeSampler, as_ids, read_table
from ecomnlp.models import resolve
from ecomnlp.predictor import embed
from ecomnlp.ranking import (CrossScorer, IndexData, ItemTable, ItemTower, RankingModule, ValidatedIndexData,
                             dot_scores, frozen_text_vectors, mean_auc, ranking_metrics, rerank, two_tower_loss)
from ecomnlp.tabular import mlp, tokenize_texts
from ecomnlp.training import _fit_module, record_run

from .ranking_settings import SEARCH_RANKING, SEARCH_TRAINER, SearchData, SearchNetwork  # noqa: F401

TASK = SEARCH_RANKING
ITEM = "item"
ITEM_FEATURES, MODEL_WEIGHTS, CATALOGUE = "item_features.json", "model.safetensors", "catalogue.safetensors"
_GUESSES = {"query": ("query", "search_term", "query_text", "keywords"),
            "item": ("item", "item_id", "product_id", "product_uid", "sku", "asin"),
            "label": ("label", "relevance", "esci_label", "grade", "gain")}


# --- the network --------------------------------------------------------------------------------------------

class SearchNet(nn.Module):
    """The query tower (an MLP on the query's text vector), the product tower and the cross scorer."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        d, items = spec["dim"], spec["items"]
        self.queries = mlp([spec["text_size"], *spec["query_hidden"], d])
        self.items = ItemTower(items["ids"], d + 1, items["numeric"], items["cardinalities"], items["texts"],
                               spec["text_size"], spec["text_dim"], spec["embedding_dim"], use_ids=spec["item_ids"],
                               id_dropout=spec["id_dropout"])
        self.cross = CrossScorer(spec["scorer"], d, spec["hidden"], spec["dropout"]) if spec["scorer"] != "dot" \
            else None


@dataclass
class Queries:
    """Query texts, as vectors from the frozen encoder (``vectors`` [n, H]) or token ids (adapter training)."""

    texts: list[str]
    vectors: torch.Tensor | None = None
    token_ids: list[list[int]] | None = None
    pad_id: int = 0

    def encode(self, rows: torch.Tensor, backbone: Backbone | None, pooling: str) -> torch.Tensor:
        if self.token_ids is None:
            return self.vectors[rows]
        batch = collate([self.token_ids[i] for i in rows.tolist()], self.pad_id)
        device = next(backbone.parameters()).device
        return backbone(batch["input_ids"].to(device), batch["attention_mask"].to(device), pooling)


class SearchObjective(nn.Module):
    """What ``RankingModule`` trains: the network, the catalogue and the queries."""

    def __init__(self, net: SearchNet, items: ItemTable, queries: Queries, network: SearchNetwork,
                 pooling: str = "mean") -> None:
        super().__init__()
        self.net, self.table, self.queries, self.settings, self.pooling = net, items, queries, network, pooling
        self.vectors: torch.Tensor | None = None

    def _items(self, rows: torch.Tensor, backbone: Backbone | None) -> torch.Tensor:
        return self.net.items(self.table.ids[rows], self.table.inputs(rows, backbone, self.pooling))

    def loss(self, batch: dict[str, Any], backbone: Backbone | None) -> torch.Tensor:
        q = self.net.queries(self.queries.encode(batch["queries"], backbone, self.pooling))
        if self.settings.negatives == "all":
            vectors = self._items(torch.arange(len(self.table)), backbone)
            cross = batch.get("cross_negative")
            return two_tower_loss(q, vectors, batch["positive"], None, "softmax", self.net.cross, cross)
        parts = [batch["positive"], batch["negative"].flatten()]
        if batch.get("cross_negative") is not None:
            parts.append(batch["cross_negative"].flatten())
        needed = torch.unique(torch.cat(parts))
        local = torch.full((len(self.table),), -1, dtype=torch.long)
        local[needed] = torch.arange(len(needed))
        vectors = self._items(needed, backbone)
        cross = local[batch["cross_negative"]] if batch.get("cross_negative") is not None else None
        return two_tower_loss(q, vectors, local[batch["positive"]], local[batch["negative"]], self.settings.loss,
                              self.net.cross, cross)

    @torch.no_grad()
    def refresh(self, backbone: Backbone | None, chunk: int = 1024) -> None:
        was = self.net.training
        self.net.eval()
        self.vectors = torch.cat([self._items(torch.arange(i, min(i + chunk, len(self.table))), backbone)
                                  for i in range(0, len(self.table), chunk)])
        self.net.train(was)

    def validation_top(self, batch: dict[str, Any], k: int, backbone: Backbone | None
                       ) -> tuple[torch.Tensor, list[dict[int, float]]]:
        q = self.net.queries(self.queries.encode(batch["queries"], backbone, self.pooling))
        rows, _ = rerank(q, self.vectors, self.net.cross, k, self.settings.rerank)
        return rows, batch["relevant"]


# --- the trained model --------------------------------------------------------------------------------------

class SearchModel:
    """A trained search ranker: ``rank``, ``score``, ``evaluate``, ``save``. Product vectors are cached; each query
    goes through the shared encoder (with the task's adapter when it trained one)."""

    def __init__(self, net: SearchNet, items: FeaturePipeline, card: dict[str, Any], item_ids: list[str],
                 vectors: torch.Tensor, backbone: Backbone) -> None:
        self.net, self.item_pipeline, self.card = net.eval(), items, card
        self.item_ids, self.vectors, self.backbone = list(item_ids), vectors, backbone
        self._index = pd.Index(self.item_ids)

    @property
    def adapter(self) -> str | None:
        return TASK if self.card["model"]["text"] == "adapter" else None

    def item_rows(self, items: Sequence[Any]) -> np.ndarray:
        return self._index.get_indexer(as_ids(items))

    def query_vectors(self, queries: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        ids = tokenize(self.backbone.tokenizer, [[str(q) for q in queries]], self.card["query_max_length"])
        with torch.inference_mode():
            return self.net.queries(embed(self.backbone, self.adapter, ids, batch_size, self.card["pooling"]))

    def rank(self, query: str, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` most relevant catalogue items for a query, best first: ``[{"item", "score"}]`` (score: the
        sigmoid of the final logit)."""
        return self.rank_many([query], k)[0]

    def rank_many(self, queries: Sequence[str], k: int = 10) -> list[list[dict[str, Any]]]:
        q = self.query_vectors(queries)
        with torch.inference_mode():
            rows, logits = rerank(q, self.vectors, self.net.cross, k, self.card["model"]["rerank"])
            scores = torch.sigmoid(logits)
        return [[{"item": self.item_ids[r], "score": float(s)} for r, s in zip(rr.tolist(), ss.tolist()) if r >= 0]
                for rr, ss in zip(rows, scores)]

    def score(self, query: str, items: Sequence[Any]) -> np.ndarray:
        """Relevance scores (sigmoid of the final logit) of items for a query; NaN for an item not in the catalogue."""
        q = self.query_vectors([query])
        rows = self.item_rows(items)
        v = self.vectors[torch.from_numpy(np.where(rows >= 0, rows, 0))]
        with torch.inference_mode():
            logits = self.net.cross(q, v[:, :-1]) if self.net.cross is not None else v[:, :-1] @ q[0] + v[:, -1]
        return np.where(rows >= 0, torch.sigmoid(logits).double().numpy(), np.nan)

    def evaluate(self, judgments: pd.DataFrame, k: int = 10, batch_size: int = 256) -> dict[str, Any]:
        """Ranking metrics over the catalogue for judged queries (columns query, item[, gain]; as from
        ``load_judgments``): hit rate, precision, recall, nDCG (graded) at ``k``, MAP, per-query AUC."""
        grouped = _relevant(judgments, self.item_rows, self.card["min_gain"])
        queries = list(grouped)
        tops, relevant, aucs = [], [], []
        for start in range(0, len(queries), batch_size):
            part = queries[start:start + batch_size]
            q = self.query_vectors(part)
            with torch.inference_mode():
                rows, _ = rerank(q, self.vectors, self.net.cross, k, self.card["model"]["rerank"])
                final = dot_scores(q, self.vectors) if self.net.cross is None else \
                    torch.stack([self.net.cross(x[None], self.vectors[:, :-1]) for x in q])
            rel = [grouped[x] for x in part]
            tops += list(rows.numpy())
            relevant += rel
            aucs.append((mean_auc(final, [{r: g for r, g in x.items() if r >= 0} for x in rel]), len(part)))
        metrics = ranking_metrics(tops, relevant, k)
        valid = [(a, n) for a, n in aucs if a == a]
        metrics["auc"] = float(sum(a * n for a, n in valid) / sum(n for _, n in valid)) if valid else float("nan")
        return metrics

    def save(self, out: str | Path) -> Path:
        with atomic_dir(out) as tmp:
            self.item_pipeline.save(tmp / ITEM_FEATURES)
            save_file({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()},
                      str(tmp / MODEL_WEIGHTS))
            save_file({"vectors": self.vectors.contiguous()}, str(tmp / CATALOGUE),
                      metadata={"items": json.dumps(self.item_ids, ensure_ascii=False)})
            if self.adapter:
                self.backbone.save_adapter(TASK, tmp)
            write_card(tmp, self.card)
        return Path(out)

    def __repr__(self) -> str:
        return f"SearchModel(items={len(self.item_ids)}, scorer={self.card['model']['scorer']!r})"


def load_search(path: str | Path, base: str | None = None, device: str = "cpu") -> SearchModel:
    """A search-ranking task directory, on its base encoder (checked by sha256) with its adapter if it has one."""
    from safetensors import safe_open

    from ecomnlp.predictor import backbone_for

    path = Path(path)
    card = read_card(path)
    net = SearchNet(card["model"])
    net.load_state_dict(load_file(str(path / MODEL_WEIGHTS)))
    with safe_open(str(path / CATALOGUE), "pt") as f:
        item_ids = json.loads(f.metadata()["items"])
    backbone = backbone_for(path, base, device)
    check_base(card, path, backbone.base_dir)
    if card["model"]["text"] == "adapter":
        backbone.load_adapter(TASK, path)
    return SearchModel(net.to(device), FeaturePipeline.load(path / ITEM_FEATURES), card, item_ids,
                       load_file(str(path / CATALOGUE))["vectors"], backbone)


# --- data ---------------------------------------------------------------------------------------------------

def load_judgments(path: str | Path | pd.DataFrame, columns: Mapping[str, str] | None = None,
                   gains: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Judgments as columns ``query`` (text), ``item`` (id as text) and ``gain`` (1 without a label column; text
    labels through ``gains``)."""
    columns = dict(columns or {})
    where = str(path) if not isinstance(path, pd.DataFrame) else "judgments"
    raw = path if isinstance(path, pd.DataFrame) else read_table(path)
    found = {}
    for field in ("query", "item", "label"):
        name = columns.get(field) or next((c for c in _GUESSES[field] if c in raw.columns), None)
        if name is None or name not in raw.columns:
            if field == "label":
                continue
            raise DataError(f"{where}: no {field} column ({name or 'tried ' + str(list(_GUESSES[field]))}); "
                            f"the file has columns {list(raw.columns)}")
        found[field] = name
    frame = pd.DataFrame({"query": raw[found["query"]].astype(str).str.strip(), "item": as_ids(raw[found["item"]])})
    if "label" in found:
        labels = raw[found["label"]]
        if gains:
            mapped = labels.astype(str).map({str(k): float(v) for k, v in gains.items()})
            bad = np.flatnonzero(mapped.isna().to_numpy())
            if len(bad):
                raise DataError(f"{where}: row {bad[0] + 1}: label {labels.iloc[bad[0]]!r} is not in gains "
                                f"{sorted(gains)}")
            frame["gain"] = mapped.to_numpy()
        else:
            frame["gain"] = pd.to_numeric(labels, errors="coerce")
            bad = np.flatnonzero(frame["gain"].isna().to_numpy())
            if len(bad):
                raise DataError(f"{where}: row {bad[0] + 1}: label {labels.iloc[bad[0]]!r} is not a number "
                                "(map text labels with data.gains)")
    else:
        frame["gain"] = 1.0
    empty = np.flatnonzero((frame["query"] == "").to_numpy() | pd.isna(frame["item"]).to_numpy())
    if len(empty):
        raise DataError(f"{where}: row {empty[0] + 1}: empty query or missing item id")
    return frame


def _relevant(judgments: pd.DataFrame, rows_of: Any, min_gain: float) -> dict[str, dict[int, float]]:
    """query -> {catalogue row: gain} of its relevant items (an item not in the catalogue gets a negative row:
    relevant, never ranked)."""
    out: dict[str, dict[int, float]] = {}
    for query, group in judgments.groupby("query", sort=False):
        keep = group[group["gain"] >= min_gain]
        rows = rows_of(list(keep["item"]))
        missing = iter(range(-2, -2 - len(rows), -1))
        out[query] = {int(r) if r >= 0 else next(missing): float(g) for r, g in zip(rows, keep["gain"])}
    return out


def _split_queries(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    queries = np.array(sorted(set(frame["query"])), dtype=object)
    cut = int(round(len(queries) * fraction))
    if not 0 < cut < len(queries):
        raise DataError(f"cannot hold out {fraction:.0%} of {len(queries)} queries")
    held = set(np.random.default_rng(seed).permutation(queries)[:cut].tolist())
    mask = frame["query"].isin(held)
    return frame[~mask], frame[mask]


def _item_frame(path: str, columns: Mapping[str, str]) -> pd.DataFrame:
    frame = read_table(path)
    name = columns.get("item") or next((c for c in _GUESSES["item"] if c in frame.columns), None)
    if name is None or name not in frame.columns:
        raise DataError(f"{path}: no item id column; the file has columns {list(frame.columns)}")
    frame = frame.rename(columns={name: ITEM})
    frame[ITEM] = as_ids(frame[ITEM])
    return frame[frame[ITEM].notna()].drop_duplicates(ITEM).reset_index(drop=True)


# --- training -----------------------------------------------------------------------------------------------

def fit_search(
    data: SearchData,
    features: dict[str, Any] | None = None,
    model: str = "minilm-l6",
    network: SearchNetwork = SearchNetwork(),
    lora: LoraSettings = LoraSettings(),
    trainer: TrainerSettings = SEARCH_TRAINER,
    pooling: Literal["mean", "cls"] = "mean",
    work_dir: str | Path = "runs/search",
    k: int = 10,
) -> tuple[SearchModel, dict[str, Any]]:
    """Train a search ranker in memory: (the model, a JSON-able summary). See ``train_search``."""
    started = time.perf_counter()
    L.seed_everything(trainer.seed, workers=True)
    if network.negatives == "all" and network.loss != "softmax":
        raise ValueError("negatives 'all' (the whole catalogue) goes with loss softmax")
    items_frame = _item_frame(data.items, data.columns)
    frames = {"train": load_judgments(data.judgments, data.columns, data.gains)}
    where = {"train": data.judgments}
    for name, fraction in (("test", data.test_fraction), ("valid", data.valid_fraction)):
        if getattr(data, name):
            frames[name] = load_judgments(getattr(data, name), data.columns, data.gains)
            where[name] = getattr(data, name)
        elif fraction:
            frames["train"], frames[name] = _split_queries(frames["train"], fraction, data.split_seed)
            where[name] = f"{fraction:.0%} of the queries of {data.judgments}"
    spec = {k_: v for k_, v in (features or {}).items()}
    spec["categorical"] = {ITEM: {}, **(spec.get("categorical") or {})}
    if not spec.get("templates"):
        raise ValueError("features.templates: search ranking needs the products' text (e.g. {text: '{title}'})")
    known = items_frame.copy()
    train_items = set(frames["train"][ITEM])
    known[ITEM] = known[ITEM].where(known[ITEM].isin(train_items), None)
    pipeline = FeaturePipeline(spec).fit(known)
    features_ = pipeline.transform(items_frame)
    texts = list(pipeline.spec["templates"])

    base_dir = resolve(model)
    backbone = Backbone(base_dir)
    limit = backbone.max_positions
    lengths = [len(x) for f in tokenize_texts(backbone.tokenizer, features_.texts, limit) for x in f]
    card: dict[str, Any] = {
        "task": TASK, "kind": SEARCH_KIND, "text_fields": texts, "pooling": pooling,
        "max_length": data.max_length or choose_max_length(lengths, 98.0, limit),
        "query_max_length": data.query_max_length, "min_gain": data.min_gain, "gains": data.gains,
        "columns": data.columns, "base_model": {"name": model, "path": str(base_dir),
                                                "checksum": base_checksum(base_dir)},
    }
    if network.text == "adapter":
        card["lora"] = dataclasses.asdict(lora)
        backbone.add_adapter(TASK, lora_config(lora))
    card["model"] = {**dataclasses.asdict(network), "text_size": backbone.hidden_size,
                     "items": {"ids": pipeline.cardinalities[0], "numeric": len(pipeline.numeric_names),
                               "cardinalities": pipeline.cardinalities[1:], "texts": len(texts)}}
    ids, categorical = features_.categorical[:, 0], features_.categorical[:, 1:]
    pad = backbone.tokenizer.pad_token_id
    if network.text == "adapter":
        table = ItemTable(ids, features_.numeric, categorical,
                          token_ids=tokenize_texts(backbone.tokenizer, features_.texts, card["max_length"]), pad_id=pad)
    else:
        table = ItemTable(ids, features_.numeric, categorical,
                          text=frozen_text_vectors(backbone, features_.texts, card["max_length"], pooling))
    all_queries = list(dict.fromkeys(q for f in frames.values() for q in f["query"]))
    query_index = pd.Index(all_queries)
    if network.text == "adapter":
        queries = Queries(all_queries, token_ids=tokenize(backbone.tokenizer, [all_queries], data.query_max_length),
                          pad_id=pad)
    else:
        queries = Queries(all_queries, vectors=frozen_text_vectors(
            backbone, {"query": all_queries}, data.query_max_length, pooling)[:, 0])

    item_index = pd.Index(items_frame[ITEM])
    train = frames["train"]
    unknown = ~train[ITEM].isin(set(item_index))
    if unknown.any():
        raise DataError(f"{data.judgments}: item {train[ITEM][unknown].iloc[0]!r} is not in the catalogue {data.items}")
    q_rows, i_rows = query_index.get_indexer(train["query"]), item_index.get_indexer(train[ITEM])
    relevant = train["gain"].to_numpy() >= data.min_gain
    pairs = (q_rows[relevant].astype(np.int64), i_rows[relevant].astype(np.int64))
    judged_keys = np.sort(q_rows.astype(np.int64) * len(item_index) + i_rows)
    sampler = NegativeSampler(np.arange(len(item_index)), judged_keys, len(item_index))
    irrelevant: dict[int, np.ndarray] = {}
    for q, i in zip(q_rows[~relevant], i_rows[~relevant]):
        irrelevant.setdefault(int(q), []).append(int(i))
    irrelevant = {q: np.array(v) for q, v in irrelevant.items()}

    def collate_train(index: list[int]) -> dict[str, Any]:
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        users, items = pairs[0][index], pairs[1][index]
        batch: dict[str, Any] = {"size": len(index), "queries": torch.from_numpy(users),
                                 "positive": torch.from_numpy(items), "negative": None, "cross_negative": None}
        if network.negatives != "all":
            negative = sampler(users, network.negatives, rng)
            for j, u in enumerate(users):  # judged irrelevant items first, up to half of the negatives
                hard = irrelevant.get(int(u))
                if hard is not None:
                    take = min(len(hard), max(1, network.negatives // 2))
                    negative[j, :take] = rng.choice(hard, take, replace=False)
            batch["negative"] = torch.from_numpy(negative)
        if network.scorer != "dot":
            batch["cross_negative"] = torch.from_numpy(sampler(users, network.cross_negatives, rng))
        return batch

    valid_groups = _relevant(frames["valid"], item_index.get_indexer, data.min_gain) if "valid" in frames else {}
    valid_groups = {q: g for q, g in valid_groups.items() if g}
    valid_queries = np.array([query_index.get_loc(q) for q in valid_groups], dtype=np.int64)
    valid_relevant = list(valid_groups.values())

    def collate_valid(index: list[int]) -> dict[str, Any]:
        return {"size": len(index), "queries": torch.from_numpy(valid_queries[index]),
                "relevant": [valid_relevant[i] for i in index]}

    net = SearchNet(card["model"])
    objective = SearchObjective(net, table, queries, network, pooling)
    trains_adapter = network.text == "adapter"
    module = RankingModule(objective, trainer, backbone if trains_adapter else None, k)
    if len(valid_queries):
        datamodule = ValidatedIndexData(len(pairs[0]), collate_train, data.batch_size, trainer.seed,
                                        len(valid_queries), collate_valid, data.eval_batch_size)
        monitor = trainer.monitor or f"val/ndcg@{k}"
        direction = "min" if monitor.endswith("loss") else "max"
    else:
        datamodule = IndexData(len(pairs[0]), collate_train, data.batch_size, trainer.seed)
        monitor, direction = "train/epoch_loss", "min"
    fit, best = _fit_module(module, datamodule, trainer, monitor, Path(work_dir), mode=direction)
    train_wall = round(time.perf_counter() - started, 1)
    objective.refresh(backbone if trains_adapter else None)
    backbone.eval()
    ranker = SearchModel(net, pipeline, card, list(item_index), objective.vectors, backbone)
    metrics = {name: ranker.evaluate(frames[name], k) for name in ("valid", "test") if name in frames}
    stats = {name: {"judgments": len(f), "queries": int(f["query"].nunique()),
                    "relevant": int((f["gain"] >= data.min_gain).sum()), "source": where[name]}
             for name, f in frames.items()}
    summary = record_run(
        card, work_dir, fit, best, trainer, data.batch_size, started, train_wall, metrics, k, stats,
        catalogue=len(item_index), monitor=monitor,
        features={"numeric": pipeline.numeric_names, "categorical": pipeline.categorical_names, "texts": texts})
    return ranker, summary


def train_search(
    data: SearchData,
    out: str,
    features: dict[str, Any] | None = None,
    model: str = "minilm-l6",
    network: SearchNetwork = SearchNetwork(),
    lora: LoraSettings = LoraSettings(),
    trainer: TrainerSettings = SEARCH_TRAINER,
    pooling: Literal["mean", "cls"] = "mean",
    k: int = 10,
) -> dict[str, Any]:
    """Train a search ranker and save the task directory ``out`` (``ecomnlp.load(out)`` gives a ``SearchModel``).

    ``features``: the products' FeaturePipeline spec; its templates are the product text, encoded by ``model``
    like the queries (through the task's LoRA adapter with ``network.text: adapter``, else frozen and cached).
    The validation and test metrics (graded nDCG, hit rate, precision, recall at ``k``, MAP, AUC) go into the card.
    """
    ranker, summary = fit_search(data, features, model, network, lora, trainer, pooling, out, k)
    ranker.save(out)
    return summary
