"""Records with numeric, categorical and text fields as one fused vector, for scoring models trained with
Lightning (fraud detection; any structured task: recommendation, churn, ...).

    record ──FeaturePipeline (features.py)──▶ numeric [n, d], categorical [n, k], texts per template
    texts ──Backbone + the task's LoRA adapter (pooled)──▶ text vectors [n, T, H]       (only if T > 0)
    FusedEncoder: numeric ⊕ an embedding per categorical column ⊕ a projection per text field ──▶ [n, fused]

A text-free table never loads an encoder: ``TabularSplit.text`` and ``.ids`` stay None.
Scorers (``Classifier`` here, the detectors of ``detectors.py``) take the inputs dict
``{"numeric", "categorical", "text"}`` and give ``score`` (higher = more suspicious) and ``loss``.
"""
from __future__ import annotations

import difflib
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn

from .data import DataError, LengthGroupedBatches, collate, tokenize
from .detection import detection_metrics, imbalance_loss
from .training import TrainableModule

if TYPE_CHECKING:
    from .backbone import Backbone, Pooling
    from .config import TrainerSettings
    from .features import FeaturePipeline

Inputs = dict[str, torch.Tensor | None]
SplitMethod = Literal["temporal", "stratified", "random"]


# --- reading and splitting tables ----------------------------------------------------------------------------

def read_frame(path: str | Path) -> pd.DataFrame:
    """A CSV / TSV / JSONL / Parquet file as a DataFrame with typed columns; in CSV only blank fields are missing."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    readers: dict[str, Callable[[], pd.DataFrame]] = {
        ".csv": lambda: pd.read_csv(path, keep_default_na=False, na_values=[""], encoding="utf-8-sig"),
        ".tsv": lambda: pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""], encoding="utf-8-sig"),
        ".jsonl": lambda: pd.read_json(path, lines=True),
        ".json": lambda: pd.read_json(path),
        ".parquet": lambda: pd.read_parquet(path),
    }
    if suffix not in readers:
        raise DataError(f"{path}: unsupported format '{path.suffix}' (use {', '.join(readers)})")
    try:
        frame = readers[suffix]()
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read: {err}") from err
    if frame.empty:
        raise DataError(f"{path}: the file has no data rows")
    return frame


def as_frame(records: Any, columns: Sequence[str] = ()) -> pd.DataFrame:
    """A DataFrame from a DataFrame, a dict of columns, a list of dicts or one dict of values (one record). For
    dicts, a key that no record has is a missing value in every record (``columns``: the keys to add that way)."""
    if isinstance(records, pd.DataFrame):
        return records
    if isinstance(records, dict):
        if any(isinstance(v, (list, tuple, np.ndarray, pd.Series)) for v in records.values()):
            return pd.DataFrame(records)
        records = [records]
    rows = list(records)
    if rows and not all(isinstance(r, dict) for r in rows):
        raise TypeError("records must be a DataFrame, a dict of columns, or a list of dicts")
    for i, row in enumerate(rows, 1):  # a misspelt key would otherwise read as a missing value
        missing = [c for c in columns if c not in row]
        for key in (k for k in row if k not in columns and missing):
            close = difflib.get_close_matches(str(key).casefold(), [c.casefold() for c in missing], n=1, cutoff=0.75)
            if close:
                meant = next(c for c in missing if c.casefold() == close[0])
                raise DataError(f"record {i}: field '{key}' is not one the model reads, and '{meant}' is missing: "
                                f"a misspelt name? (the model reads {list(columns)})")
    frame = pd.DataFrame.from_records(rows)
    for c in columns:
        if c not in frame.columns:
            frame[c] = None
    return frame


def split_frame(frame: pd.DataFrame, fraction: float, method: SplitMethod, seed: int, time: str | None = None,
                labels: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, held out) rows. ``temporal``: the latest ``fraction`` by ``time`` is held out (ties by file order);
    ``stratified``: a seeded share of each label (unlabelled rows as their own group); ``random``: seeded."""
    n = len(frame)
    cut = int(round(n * fraction))
    if not 0 < cut < n:
        raise DataError(f"cannot hold out {fraction:.0%} of {n} rows")
    if method == "temporal":
        if time is None:
            raise ValueError("a temporal split needs a time column (data.time)")
        times = _time_order(frame[time])
        unknown = np.flatnonzero(np.isnan(times))
        if len(unknown):  # NaN sorts last: those rows would be held out as the latest
            raise DataError(f"row {unknown[0] + 1}, column '{time}': no time, so the row cannot be placed in a "
                            f"temporal split ({len(unknown)} such row(s))")
        order = np.argsort(times, kind="stable")
        return frame.iloc[np.sort(order[: n - cut])], frame.iloc[np.sort(order[n - cut:])]
    rng = np.random.default_rng(seed)
    if method == "stratified" and labels is not None:
        groups = np.where(np.isnan(labels), -1, labels)
        held = []
        for g in np.unique(groups):
            members = rng.permutation(np.flatnonzero(groups == g))
            held.append(members[: int(round(len(members) * fraction))])
        held_out = np.sort(np.concatenate(held))
    elif method in ("stratified", "random"):
        held_out = np.sort(rng.permutation(n)[:cut])
    else:
        raise ValueError(f"unknown split {method!r}; use temporal, stratified or random")
    kept = np.setdiff1d(np.arange(n), held_out)
    return frame.iloc[kept], frame.iloc[held_out]


def _time_order(values: pd.Series) -> np.ndarray:
    """Times as float64 (NaN: none)."""
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    stamps = pd.to_datetime(values, errors="raise", utc=True)
    return np.where(stamps.isna(), np.nan, stamps.astype("int64").to_numpy().astype(np.float64))


# --- one split as tensors -----------------------------------------------------------------------------------

@dataclass
class TabularSplit:
    """One split's rows as model inputs, row-aligned. Text fields come as token ids (``ids``: per field, per row),
    when the adapter trains, or as vectors already pooled by the encoder (``text``: [n, T, H])."""

    numeric: torch.Tensor  # float32 [n, d]
    categorical: torch.Tensor  # int64 [n, k]
    targets: torch.Tensor  # float32 [n]; NaN = no label
    text: torch.Tensor | None = None
    ids: list[list[list[int]]] | None = None
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def lengths(self) -> list[int]:
        """Token count per row, all text fields together (0 without text ids)."""
        if not self.ids:
            return [0] * len(self)
        return [sum(len(field[i]) for field in self.ids) for i in range(len(self))]

    def batch(self, index: list[int]) -> dict[str, torch.Tensor]:
        out = {"numeric": self.numeric[index], "categorical": self.categorical[index], "targets": self.targets[index]}
        if self.text is not None:
            out["text"] = self.text[index]
        if self.ids:  # row-major: the T fields of row 0, then of row 1, ...
            out.update(collate([field[i] for i in index for field in self.ids], self.pad_id))
        return out

    def inputs(self) -> Inputs:
        if self.ids:
            raise ValueError("this split holds token ids: encode its texts to vectors first")
        return {"numeric": self.numeric, "categorical": self.categorical, "text": self.text}


def tokenize_texts(tokenizer: Any, texts: dict[str, list[str]], max_length: int) -> list[list[list[int]]]:
    """Token ids per text field (template), per row."""
    return [tokenize(tokenizer, [t], max_length) for t in texts.values()]


def text_vectors(backbone: Backbone, adapter: str | None, ids: list[list[list[int]]], batch_size: int,
                 pooling: Pooling = "mean") -> torch.Tensor:
    """Pooled vectors [n, T, H] of every text field through ``adapter`` (``predictor.embed``)."""
    from .predictor import embed

    return torch.stack([embed(backbone, adapter, field, batch_size, pooling) for field in ids], dim=1)


# --- the fused representation and the supervised scorer -----------------------------------------------------

def embedding_dim(cardinality: int, cap: int) -> int:
    """Width of a categorical column's embedding: 1.6 * cardinality^0.56 (fast.ai's rule), between 2 and ``cap``."""
    return int(max(2, min(cap, round(1.6 * cardinality ** 0.56))))


class FusedEncoder(nn.Module):
    """numeric ⊕ one embedding per categorical column ⊕ one linear projection per text field."""

    def __init__(self, numeric: int, cardinalities: Sequence[int], texts: int = 0, text_size: int = 0,
                 text_dim: int = 32, max_embedding: int = 16) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim(c, max_embedding)) for c in cardinalities)
        self.projections = nn.ModuleList(nn.Linear(text_size, text_dim) for _ in range(texts))
        self.out_dim = numeric + sum(e.embedding_dim for e in self.embeddings) + texts * text_dim

    def forward(self, inputs: Inputs) -> torch.Tensor:
        categorical, text = inputs["categorical"], inputs["text"]
        parts = [inputs["numeric"]] + [e(categorical[:, i]) for i, e in enumerate(self.embeddings)]
        parts += [p(text[:, i]) for i, p in enumerate(self.projections)]
        return torch.cat(parts, dim=1)


def mlp(sizes: Sequence[int], dropout: float = 0.0, bias: bool = True,
        activation: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers of ``sizes`` with an activation (and dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            layers += [activation()] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """Fused vector ──MLP──▶ one logit. Loss: binary cross-entropy with positives weighted ``pos_weight``
    times, and the focal factor when ``gamma`` > 0 (``detection.imbalance_loss``)."""

    def __init__(self, fused: FusedEncoder, hidden: Sequence[int] = (128, 64), dropout: float = 0.1,
                 pos_weight: float = 1.0, gamma: float = 0.0) -> None:
        super().__init__()
        self.fused, self.pos_weight, self.gamma = fused, pos_weight, gamma
        self.head = mlp([fused.out_dim, *hidden, 1], dropout)

    def score(self, inputs: Inputs) -> torch.Tensor:
        return self.head(self.fused(inputs)).squeeze(-1)

    def loss(self, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(targets)
        return imbalance_loss(self.score(inputs)[known], targets[known], self.pos_weight, self.gamma)


class Ensemble(nn.Module):
    """Members trained one by one (each with its own seed), their fraud probabilities averaged, with ``weights``
    (default equal; normalised to sum to 1). The score is the logit of that mean,
    log(sum w sigmoid(s)) - log(sum w sigmoid(-s)), computed without saturating."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        w = torch.tensor(weights if weights is not None else [1.0] * len(members), dtype=torch.float32)
        self.register_buffer("log_weights", (w / w.sum()).log()[:, None], persistent=False)  # from the card

    def score(self, inputs: Inputs) -> torch.Tensor:
        s = torch.stack([m.score(inputs) for m in self.members])
        logsigmoid = nn.functional.logsigmoid
        w = self.log_weights
        return torch.logsumexp(logsigmoid(s) + w, 0) - torch.logsumexp(logsigmoid(-s) + w, 0)

    def loss(self, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
        raise TypeError("an ensemble is not trained as a whole: train each of its members")


class BoostedTrees(nn.Module):
    """Histogram gradient-boosted trees (sklearn's ``HistGradientBoostingClassifier``, ``options`` passed to it)
    fitted on the numeric features, then kept as tensors, one row of nodes per tree, so that they are saved as
    safetensors and scored in torch. The score is sklearn's ``decision_function`` (a logit). The conversion reads
    sklearn's fitted predictors (private attributes; the tests compare the scores with sklearn's)."""

    _NODES = {"feature": ("feature_idx", torch.int64), "threshold": ("num_threshold", torch.float64),
              "missing_left": ("missing_go_to_left", torch.bool), "left": ("left", torch.int64),
              "right": ("right", torch.int64), "leaf": ("is_leaf", torch.bool), "value": ("value", torch.float64)}

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.options = dict(options or {})
        for name, (_, dtype) in self._NODES.items():  # [trees, nodes]; their shape is known once fitted or loaded
            self.register_buffer(name, torch.zeros(0, 1, dtype=dtype))
        self.register_buffer("baseline", torch.zeros((), dtype=torch.float64))

    def fit(self, numeric: torch.Tensor, targets: torch.Tensor, seed: int) -> None:
        """Fit on the labelled rows (NaN targets left out)."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        known = ~torch.isnan(targets)
        model = HistGradientBoostingClassifier(random_state=seed, **self.options)
        model.fit(numeric[known].numpy(), targets[known].numpy().astype(int))
        trees = [predictors[0].nodes for predictors in model._predictors]
        width = max(len(nodes) for nodes in trees)
        for name, (field, dtype) in self._NODES.items():
            column = torch.zeros(len(trees), width, dtype=dtype)
            for t, nodes in enumerate(trees):  # padding nodes are never reached
                column[t, :len(nodes)] = torch.from_numpy(nodes[field].astype(np.float64)).to(dtype)
            setattr(self, name, column)
        self.baseline = torch.tensor(float(model._baseline_prediction.item()), dtype=torch.float64)

    def score(self, inputs: Inputs, chunk: int = 4096) -> torch.Tensor:
        return torch.cat([self._score(x) for x in inputs["numeric"].double().split(chunk)]).float()

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        trees = torch.arange(len(self.feature), device=x.device)
        node = torch.zeros(len(x), len(trees), dtype=torch.int64, device=x.device)  # every row at every root
        for _ in range(self.feature.shape[1]):
            leaf = self.leaf[trees, node]
            if leaf.all():
                break
            value = x.gather(1, self.feature[trees, node])
            left = (value <= self.threshold[trees, node]) | (value.isnan() & self.missing_left[trees, node])
            node = torch.where(leaf, node, torch.where(left, self.left[trees, node], self.right[trees, node]))
        return self.baseline + self.value[trees, node].sum(1)

    def loss(self, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
        raise TypeError("boosted trees are fitted by sklearn (BoostedTrees.fit), not by gradient descent")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in (*self._NODES, "baseline"):  # take the saved trees' shape
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args)


# --- training ----------------------------------------------------------------------------------------------

class TabularData(L.LightningDataModule):
    """Training batches shuffled (grouped by token length when there is text), validation in order."""

    def __init__(self, train: TabularSplit, valid: TabularSplit, batch_size: int, eval_batch_size: int,
                 seed: int) -> None:
        super().__init__()
        self.train, self.valid, self.seed = train, valid, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size

    def _loader(self, split: TabularSplit, batch_size: int, shuffle: bool) -> torch.utils.data.DataLoader:
        batches = LengthGroupedBatches(split.lengths, batch_size, shuffle=shuffle, seed=self.seed,
                                       num_replicas=self.trainer.world_size, rank=self.trainer.global_rank)
        return torch.utils.data.DataLoader(range(len(split)), batch_sampler=batches, collate_fn=split.batch)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.train, self.batch_size, True)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.valid, self.eval_batch_size, False)


class TabularModule(TrainableModule):
    """A scorer (``.loss(inputs, targets)``, ``.score(inputs)``) trained with Lightning. With a ``backbone``, text
    fields arrive as token ids and go through its active (trainable) adapter. Validation logs ``val/loss`` and, when
    validation has labels of both classes, ``val/auprc`` and ``val/auroc`` (``detection.detection_metrics``)."""

    def __init__(self, scorer: nn.Module, settings: TrainerSettings, backbone: Backbone | None = None,
                 pooling: Pooling = "mean", texts: int = 0) -> None:
        super().__init__(settings)
        self.scorer, self.backbone, self.pooling, self.texts = scorer, backbone, pooling, texts
        self._scores: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def inputs(self, batch: dict[str, torch.Tensor]) -> Inputs:
        text = batch.get("text")
        if "input_ids" in batch:
            vectors = self.backbone(batch["input_ids"], batch["attention_mask"], self.pooling)
            text = vectors.view(len(batch["numeric"]), self.texts, -1)
        return {"numeric": batch["numeric"], "categorical": batch["categorical"], "text": text}

    def training_step(self, batch: dict[str, torch.Tensor], _: int) -> torch.Tensor:
        loss = self.scorer.loss(self.inputs(batch), batch["targets"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["targets"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], _: int) -> None:
        inputs = self.inputs(batch)
        self.log("val/loss", self.scorer.loss(inputs, batch["targets"]), batch_size=len(batch["targets"]))
        self._scores.append(self.scorer.score(inputs).detach().float().cpu())
        self._targets.append(batch["targets"].cpu())

    def on_validation_epoch_end(self) -> None:
        scores, targets = torch.cat(self._scores).numpy(), torch.cat(self._targets).numpy()
        self._scores, self._targets = [], []
        metrics = detection_metrics(scores, targets, top_k=())
        if "auprc" in metrics:
            self.log_dict({"val/auprc": metrics["auprc"], "val/auroc": metrics["auroc"]}, prog_bar=True)


def rows_of(inputs: Inputs, index: slice | torch.Tensor) -> Inputs:
    """The inputs of some rows (a slice, a boolean mask or indices)."""
    return {k: v[index] if v is not None else None for k, v in inputs.items()}


@torch.inference_mode()
def in_chunks(fn: Callable[[Inputs], torch.Tensor], inputs: Inputs, chunk: int = 8192) -> torch.Tensor:
    """``fn`` over the rows in chunks (no gradients), results concatenated along the first dimension."""
    n = len(inputs["numeric"])
    return torch.cat([fn(rows_of(inputs, slice(i, i + chunk))) for i in range(0, max(n, 1), chunk)])


def score_inputs(scorer: nn.Module, inputs: Inputs, chunk: int = 8192) -> np.ndarray:
    """``scorer.score`` of every row, in eval mode, as float64."""
    was_training = scorer.training
    scorer.eval()
    scores = in_chunks(scorer.score, inputs, chunk)
    scorer.train(was_training)
    return scores.double().numpy()


# --- explanations: which fields raised a record's score -----------------------------------------------------

@dataclass(frozen=True)
class FieldGroup:
    """One input field as the model sees it: its numeric, categorical and text columns."""

    name: str
    columns: tuple[str, ...]  # the record's own fields behind it
    numeric: tuple[int, ...] = ()
    categorical: tuple[int, ...] = ()
    text: tuple[int, ...] = ()


def field_groups(pipeline: FeaturePipeline) -> list[FieldGroup]:
    """Each numeric column (its value or sin / cos, missing indicator and bucket), categorical column, cross and
    template."""
    spec, categorical = pipeline.spec, pipeline.categorical_names
    groups, start = [], 0
    for c, outputs in pipeline.numeric_outputs.items():
        groups.append(FieldGroup(c, (c,), tuple(range(start, start + len(outputs))),
                                 tuple(i for i, n in enumerate(categorical) if n == f"{c}_bucket")))
        start += len(outputs)
    for c in spec["categorical"]:
        groups.append(FieldGroup(c, (c,), categorical=(categorical.index(c),)))
    bucketed = {f"{c}_bucket": c for c, o in spec["numeric"].items() if o["buckets"]}
    for x in spec["crosses"]:
        groups.append(FieldGroup(x["name"], tuple(bucketed.get(c, c) for c in x["columns"]),
                                 categorical=(categorical.index(x["name"]),)))
    for t, (name, template) in enumerate(spec["templates"].items()):
        groups.append(FieldGroup(name, template_fields(template), text=(t,)))
    return groups


def template_fields(template: str) -> tuple[str, ...]:
    """The columns a template renders, in order (the pipeline has checked the template)."""
    return tuple(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(template) if f))


def input_columns(pipeline: FeaturePipeline) -> list[str]:
    """Every column the pipeline reads from a record."""
    spec = pipeline.spec
    texts = [f for t in spec["templates"].values() for f in template_fields(t)]
    columns = [*spec["numeric"], *spec["categorical"], *texts]
    return list(dict.fromkeys(columns))


def baseline_inputs(pipeline: FeaturePipeline, encode_texts: Callable[[dict[str, list[str]]], torch.Tensor | None]
                    ) -> Inputs:
    """The inputs of a record with every field missing, missing indicators off: each numeric field at its fill
    value (the training median by default), each category unknown (0), each template rendered without values."""
    features = pipeline.transform({c: [None] for c in input_columns(pipeline)})
    numeric = features.numeric.clone()
    for i, name in enumerate(pipeline.numeric_names):
        if name.endswith("_missing") and name[: -len("_missing")] in pipeline.spec["numeric"]:
            numeric[:, i] = 0.0
    return {"numeric": numeric, "categorical": features.categorical, "text": encode_texts(features.texts)}


def occlusion(score: Callable[[Inputs], np.ndarray], inputs: Inputs, baseline: Inputs,
              groups: Sequence[FieldGroup], chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(scores [n], contributions [n, G]): each group's contribution is the record's score minus its score with
    that group set to the baseline (positive: the field raised the score)."""
    n = len(inputs["numeric"])
    scores, contributions = np.zeros(n), np.zeros((n, len(groups)))
    for start in range(0, n, chunk):
        part = rows_of(inputs, slice(start, start + chunk))
        m = len(part["numeric"])
        variants = {k: v.repeat(len(groups) + 1, *([1] * (v.dim() - 1))) if v is not None else None
                    for k, v in part.items()}
        for g, group in enumerate(groups, start=1):
            rows = slice(g * m, (g + 1) * m)
            for key, columns in (("numeric", group.numeric), ("categorical", group.categorical), ("text", group.text)):
                if columns:
                    variants[key][rows, list(columns)] = baseline[key][0, list(columns)]
        s = score(variants).reshape(len(groups) + 1, m)
        scores[start:start + m] = s[0]
        contributions[start:start + m] = (s[0][None, :] - s[1:]).T
    return scores, contributions


def seeded_sample(frame: pd.DataFrame, rows: int | None, seed: int) -> pd.DataFrame:
    """At most ``rows`` rows (a seeded random sample, file order kept)."""
    if rows is None or rows >= len(frame):
        return frame
    keep = sorted(random.Random(seed).sample(range(len(frame)), rows))
    return frame.iloc[keep]

