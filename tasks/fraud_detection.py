"""Fraud detection: records with numeric, categorical and (optional) text fields -> a fraud probability or an
anomaly score, an alert decision, and the fields that raised the score.

    ecomnlp train-fraud --config configs/fraud_detection.yaml
    m = ecomnlp.load("runs/fraud"); m.score(records)

Modes:
  supervised       every row labelled: an MLP on the fused record vector (``tabular.Classifier``; with
                   ``network.members`` > 1 a seed ensemble of them, ``tabular.Ensemble``) with class weights and/or
                   focal loss; early stopping on validation AUPRC; with ``network.trees`` > 0, gradient-boosted
                   trees (``tabular.BoostedTrees``) join the ensemble with that weight; Platt-calibrated probability.
  semi_supervised  few labels (missing labels allowed): a detector fitted on the records, with the known frauds
                   pushed away (Deep SAD term) or left out (ECOD); validation labels, when they hold frauds, pick the
                   epoch (AUPRC), calibrate the score into a probability and can set the threshold by precision.
  unsupervised     labels never used: a detector fitted on all training records (mostly normal); early stopping on
                   the validation loss; the score is the anomaly score; the threshold follows an alert budget.
Detectors: ``classifier`` (supervised), ``autoencoder``, ``deep_svdd``, ``ecod`` (``ecomnlp.detectors``).
Settings: ``tasks/fraud_settings.py`` (light, for the CLI).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ecomnlp.artifact import (FEATURES, FRAUD_KIND, MODEL_WEIGHTS, atomic_dir, base_checksum, check_base, read_card,
                              write_card)
from ecomnlp.backbone import Backbone, lora_config
from ecomnlp.config import LoraSettings, TrainerSettings
from ecomnlp.data import DataError, choose_max_length
from ecomnlp.detection import (Calibration, binary_labels, choose_threshold, detection_metrics, fit_platt,
                               resolve_pos_weight)
from ecomnlp.detectors import AutoEncoder, DeepSVDD, Ecod, detector_matrix
from ecomnlp.features import FeaturePipeline
from ecomnlp.models import resolve
from ecomnlp.predictor import backbone_for
from ecomnlp.tabular import (BoostedTrees, Classifier, Ensemble, FusedEncoder, Inputs, TabularData, TabularModule,
                             TabularSplit, as_frame, baseline_inputs, field_groups, in_chunks, input_columns, occlusion,
                             read_frame, rows_of, score_inputs, seeded_sample, split_frame, text_vectors,
                             tokenize_texts)
from ecomnlp.training import _fit_module, _version, peak_rss_mb

from .fraud_settings import (FRAUD_TRAINER, TASK, Detector, FraudData, Mode, NetworkSettings,  # noqa: F401
                             ThresholdSettings)

log = logging.getLogger(__name__)


class FraudModel:
    """A trained fraud-detection task: feature pipeline, scorer, calibration, threshold (and, with text fields, the
    shared encoder with the task's adapter)."""

    def __init__(self, pipeline: FeaturePipeline, scorer: nn.Module, card: dict[str, Any],
                 backbone: Backbone | None = None) -> None:
        self.pipeline, self.scorer, self.card, self.backbone = pipeline, scorer.eval(), card, backbone
        self.calibration = Calibration(**card["calibration"])
        self.groups = field_groups(pipeline)
        self.columns = input_columns(pipeline)
        self._baseline: Inputs | None = None

    @property
    def threshold(self) -> float:
        return float(self.card["threshold"]["value"])

    @property
    def text_fields(self) -> list[str]:
        return list(self.pipeline.spec["templates"])

    def encode_texts(self, texts: dict[str, list[str]], batch_size: int = 64) -> torch.Tensor | None:
        """Pooled vectors [n, T, H] of the templates' texts through the task's adapter; None without text fields."""
        if not texts:
            return None
        ids = tokenize_texts(self.backbone.tokenizer, texts, int(self.card["max_length"]))
        return text_vectors(self.backbone, TASK, ids, batch_size, self.card["pooling"])

    def inputs(self, records: Any) -> tuple[Inputs, pd.DataFrame, dict[str, list[str]]]:
        """Model inputs of ``records`` (a DataFrame, a dict of columns or a list of dicts), the records as a
        DataFrame, and the rendered texts."""
        frame = as_frame(records, self.columns)
        features = self.pipeline.transform(frame)
        return ({"numeric": features.numeric, "categorical": features.categorical,
                 "text": self.encode_texts(features.texts)}, frame, features.texts)

    def _scores(self, inputs: Inputs) -> np.ndarray:
        return self.calibration(score_inputs(self.scorer, inputs))

    def scores(self, records: Any) -> np.ndarray:
        """The reported score of each record: a calibrated fraud probability, or the anomaly score (card "score")."""
        return self._scores(self.inputs(records)[0])

    def score(self, records: Any, explain: bool = True, top_k: int = 3) -> list[dict[str, Any]]:
        """One dict per record: ``score``, ``alert`` (score >= the saved threshold) and, with ``explain``,
        ``explanation``: the ``top_k`` fields whose value raised the score most, each with ``field``, ``value`` and
        ``contribution`` (the score minus the score with that field at a typical value: its training median, an
        unknown category, or an empty text)."""
        inputs, frame, texts = self.inputs(records)
        if not explain:
            return [{"score": float(s), "alert": bool(s >= self.threshold)} for s in self._scores(inputs)]
        if self._baseline is None:
            self._baseline = baseline_inputs(self.pipeline, self.encode_texts)
        scores, contributions = occlusion(self._scores, inputs, self._baseline, self.groups)
        out = []
        for i, s in enumerate(scores):
            top = [g for g in (-contributions[i]).argsort(kind="stable")[:top_k] if contributions[i, g] > 0]
            out.append({"score": float(s), "alert": bool(s >= self.threshold),
                        "explanation": [{"field": self.groups[g].name, "value": self._value(frame, texts, i, g),
                                         "contribution": float(contributions[i, g])} for g in top]})
        return out

    def _value(self, frame: pd.DataFrame, texts: dict[str, list[str]], row: int, group: int) -> Any:
        g = self.groups[group]
        if g.text:
            return texts[g.name][row]
        values = {c: _plain(frame[c].iloc[row]) for c in g.columns}
        return values[g.columns[0]] if len(values) == 1 else values

    def evaluate(self, records: Any, labels: Any = None) -> dict[str, Any]:
        """Detection metrics on labelled records (``labels``: default the card's label column), at the saved
        threshold."""
        frame = as_frame(records, self.columns)
        column = self.card["columns"]["label"]
        if labels is None and (column is None or column not in frame.columns):
            raise ValueError(f"no labels: pass labels=..., or records with the label column {column!r}")
        y = binary_labels(frame[column] if labels is None else labels, "records", allow_missing=True)
        return detection_metrics(self.scores(frame), y, self.threshold)

    def save(self, out: str | Path) -> Path:
        """Write the task directory atomically: card.json, features.json, model.safetensors (+ the adapter)."""
        with atomic_dir(out) as tmp:
            self.pipeline.save(tmp / FEATURES)
            save_file({k: v.detach().cpu().contiguous() for k, v in self.scorer.state_dict().items()},
                      str(tmp / MODEL_WEIGHTS))
            if self.backbone is not None:
                self.backbone.save_adapter(TASK, tmp)
            write_card(tmp, self.card)
        return Path(out)

    def __repr__(self) -> str:
        c = self.card
        return f"FraudModel(mode={c['mode']!r}, detector={c['detector']!r}, threshold={self.threshold:.4g})"


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar: numpy scalars as Python ones, NaN as None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def build_scorer(spec: dict[str, Any]) -> nn.Module:
    """The (untrained) scorer that ``spec`` (the card's "model" entry) describes."""
    if spec["detector"] == "ecod":
        return Ecod(spec["ecod_rows"], spec["ecod_dims"])

    def fused() -> FusedEncoder:
        return FusedEncoder(spec["numeric"], spec["cardinalities"], spec["texts"], spec["text_size"],
                            spec["text_dim"], spec["embedding_dim"])

    if spec["detector"] == "classifier":
        members: list[nn.Module] = [Classifier(fused(), spec["hidden"], spec["dropout"], spec["pos_weight"],
                                               spec["focal_gamma"]) for _ in range(spec.get("members", 1))]
        trees = spec.get("trees", 0.0)
        if not trees:
            return members[0] if len(members) == 1 else Ensemble(members)
        weights = [(1 - trees) / len(members)] * len(members) + [trees]
        return Ensemble([*members, BoostedTrees(spec["trees_options"])], weights)
    autoencoder = AutoEncoder(fused(), spec["numeric"], spec["cardinalities"], spec["texts"], spec["text_size"],
                              spec["hidden"], spec["bottleneck"], bias=spec["detector"] == "autoencoder",
                              anomaly_weight=spec["anomaly_weight"], mask=spec.get("mask", 0.0))
    return autoencoder if spec["detector"] == "autoencoder" else DeepSVDD(autoencoder, spec["anomaly_weight"])


def load_fraud(path: str | Path, base: str | None = None, device: str = "cpu") -> FraudModel:
    """A fraud task directory. Text-free tasks load no encoder; others load their base (checked by sha256) and
    their adapter."""
    path = Path(path)
    card = read_card(path)
    pipeline = FeaturePipeline.load(path / FEATURES)
    scorer = build_scorer(card["model"])
    scorer.load_state_dict(load_file(str(path / MODEL_WEIGHTS)))
    backbone = None
    if card.get("base_model"):
        backbone = backbone_for(path, base, device)
        check_base(card, path, backbone.base_dir)
        backbone.load_adapter(TASK, path)
    return FraudModel(pipeline, scorer.to(device), card, backbone)


# --- training ------------------------------------------------------------------------------------------------

@dataclass
class Splits:
    """The train / valid / (test) rows, their labels (NaN: unlabelled; None: no label column) and where each
    came from."""

    frames: dict[str, pd.DataFrame]
    labels: dict[str, np.ndarray | None]
    where: dict[str, str]


def load_splits(data: FraudData, mode: Mode, seed: int) -> Splits:
    """Read the files and split them as ``data`` says: the test rows first, then the validation rows; then the
    training rows are capped at ``data.max_train_rows``. Unsupervised mode never reads labels to split."""
    def labels_of(frame: pd.DataFrame, where: str) -> np.ndarray | None:
        if data.label is None:
            return None
        if data.label not in frame.columns:
            raise DataError(f"{where}: missing label column '{data.label}'; the data has columns {list(frame.columns)}")
        return binary_labels(frame[data.label], where, allow_missing=mode != "supervised")

    def cut(frame: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
        y = labels_of(frame, data.train) if mode != "unsupervised" else None
        return split_frame(frame, fraction, data.split, seed, data.time, y)

    frames, where = {"train": read_frame(data.train)}, {"train": data.train}
    for name in ("valid", "test"):
        if getattr(data, name):
            frames[name], where[name] = read_frame(getattr(data, name)), getattr(data, name)
    for name, frame in frames.items():
        if data.time is not None and data.time not in frame.columns:
            raise DataError(f"{where[name]}: missing time column '{data.time}'; "
                            f"the data has columns {list(frame.columns)}")
    how = "latest" if data.split == "temporal" else data.split
    if not data.test and data.test_fraction:
        frames["train"], frames["test"] = cut(frames["train"], data.test_fraction)
        where["test"] = f"{how} {data.test_fraction:.0%} of {data.train}"
    if not data.valid:
        frames["train"], frames["valid"] = cut(frames["train"], data.valid_fraction)
        where["valid"] = f"{how} {data.valid_fraction:.0%} of the other rows of {data.train}"
    frames["train"] = seeded_sample(frames["train"], data.max_train_rows, seed)
    return Splits(frames, {name: labels_of(f, where[name]) for name, f in frames.items()}, where)


def _check(mode: Mode, detector: Detector, threshold: ThresholdSettings, data: FraudData,
           network: NetworkSettings, features: dict[str, Any]) -> None:
    if (mode == "supervised") != (detector == "classifier"):
        raise ValueError(f"detector '{detector}' does not go with mode '{mode}': the classifier is the supervised "
                         "detector; semi_supervised and unsupervised use autoencoder, deep_svdd or ecod")
    if network.members < 1 or network.members > 1 and detector != "classifier":
        raise ValueError(f"network.members is {network.members}: at least 1, and more only for the classifier")
    if network.members > 1 and features.get("templates"):
        raise ValueError("network.members > 1 needs a text-free feature spec: the members would share (and each "
                         "retrain) the one text adapter")
    if not 0 <= network.trees < 1 or network.trees and (detector != "classifier" or features.get("templates")):
        raise ValueError(f"network.trees is {network.trees}: a weight in [0, 1), above 0 only for the classifier "
                         "on a text-free feature spec")
    if mode == "unsupervised" and threshold.rule == "precision":
        raise ValueError("unsupervised mode uses no labels: choose the threshold by alerts_per_day or alert_rate")
    if threshold.rule == "alerts_per_day" and data.time is None:
        raise ValueError("threshold rule alerts_per_day needs data.time")
    if mode == "supervised" and data.label is None:
        raise ValueError("supervised mode needs data.label")


def _has_both_classes(y: np.ndarray | None) -> bool:
    return y is not None and 0 < np.nansum(y) < np.sum(~np.isnan(y))


def _fit_detector(scorer: nn.Module, detector: Detector, train: TabularSplit, fit: Any) -> None:
    """Train or fit ``scorer`` on the training rows; known frauds (target 1) are not "normal" rows."""
    normal = ~(train.targets == 1)
    if detector == "ecod":
        scorer.fit(detector_matrix(train.inputs())[normal])
        return
    if detector == "classifier":  # an ensemble's members one by one, member i with seed + i (trees: fitted)
        for i, member in enumerate(scorer.members if isinstance(scorer, Ensemble) else [scorer]):
            fit(member, f".member{i}" if i else "", i)
        return
    autoencoder = scorer if detector == "autoencoder" else scorer.autoencoder
    autoencoder.set_text_stats(train.text[normal] if train.text is not None else None)
    fit(autoencoder, "" if detector == "autoencoder" else ".pretrain")
    autoencoder.eval()
    normal_inputs = rows_of(train.inputs(), normal)
    if detector == "autoencoder":
        autoencoder.set_field_scale(in_chunks(autoencoder.field_errors, normal_inputs))
        return
    scorer.set_center(in_chunks(autoencoder.code, normal_inputs))
    scorer.train_encoder_only()
    fit(scorer, "")


def fit_fraud(
    data: FraudData,
    features: dict[str, Any],
    mode: Mode = "supervised",
    detector: Detector | None = None,
    model: str = "minilm-l6",
    network: NetworkSettings = NetworkSettings(),
    threshold: ThresholdSettings = ThresholdSettings(),
    lora: LoraSettings = LoraSettings(),
    trainer: TrainerSettings = FRAUD_TRAINER,
    pooling: Literal["mean", "cls"] = "mean",
    work_dir: str | Path = "runs/fraud",
) -> tuple[FraudModel, dict[str, Any]]:
    """Train a fraud-detection model in memory: (the model, a JSON-able summary). Lightning logs and checkpoints go
    to ``<work_dir>.train/``. See ``train_fraud``."""
    started = time.perf_counter()
    L.seed_everything(trainer.seed, workers=True)
    detector = detector or ("classifier" if mode == "supervised" else "autoencoder")
    _check(mode, detector, threshold, data, network, features)
    splits = load_splits(data, mode, trainer.seed)
    uses_labels = mode != "unsupervised"
    labels = {name: y if uses_labels and y is not None else np.full(len(splits.frames[name]), np.nan)
              for name, y in splits.labels.items()}
    if mode == "supervised":
        for name in ("train", "valid"):
            if not np.nansum(labels[name]):
                raise DataError(f"supervised mode: no frauds among the {name} rows ({splits.where[name]})")
    pipeline = FeaturePipeline(features).fit(splits.frames["train"])
    encoded = {}
    for name, frame in splits.frames.items():  # the test rows too: a bad value there stops before training, not after
        try:
            encoded[name] = pipeline.transform(frame)
        except DataError as err:
            raise DataError(f"{splits.where[name]}, {name} rows (counted within them): {err}") from None
    texts = list(pipeline.spec["templates"])
    card: dict[str, Any] = {
        "task": TASK, "kind": FRAUD_KIND, "mode": mode, "detector": detector,
        "score": "probability" if mode == "supervised" or _has_both_classes(labels["valid"]) else "anomaly score",
        "columns": {"label": data.label, "time": data.time}, "input_columns": input_columns(pipeline),
        "text_fields": texts, "pooling": pooling, "max_length": None, "calibration": {}, "threshold": {},
    }

    backbone, ids = None, {}
    if texts:  # the only place an encoder is loaded
        base_dir = resolve(model)
        backbone = Backbone(base_dir)
        limit = backbone.max_positions
        lengths = [len(x) for field in tokenize_texts(backbone.tokenizer, encoded["train"].texts, limit) for x in field]
        card["max_length"] = data.max_length or choose_max_length(lengths, 98.0, limit)
        card["base_model"] = {"name": model, "path": str(base_dir), "checksum": base_checksum(base_dir)}
        card["lora"] = dataclasses.asdict(lora)
        backbone.add_adapter(TASK, lora_config(lora))
        ids = {name: tokenize_texts(backbone.tokenizer, f.texts, card["max_length"]) for name, f in encoded.items()}

    text_size = backbone.hidden_size if backbone else 0
    card["model"] = {
        "detector": detector, "numeric": len(pipeline.numeric_names), "cardinalities": pipeline.cardinalities,
        "texts": len(texts), "text_size": text_size, "text_dim": network.text_dim,
        "embedding_dim": network.embedding_dim, "hidden": list(network.hidden), "dropout": network.dropout,
        "bottleneck": network.bottleneck, "anomaly_weight": network.anomaly_weight, "mask": network.mask,
        "members": network.members, "trees": network.trees, "trees_options": network.trees_options,
        "focal_gamma": network.focal_gamma if network.loss == "focal" else 0.0,
        "pos_weight": resolve_pos_weight(network.pos_weight, labels["train"]) if detector == "classifier" else 1.0,
    }
    if detector == "ecod":
        card["model"].update(ecod_rows=int(np.sum(labels["train"] != 1)),
                             ecod_dims=len(pipeline.numeric_names) + len(texts) * text_size)
    fraud = FraudModel(pipeline, build_scorer(card["model"]), card, backbone)
    trains_adapter = detector == "classifier" and backbone is not None

    def split(name: str) -> TabularSplit:
        f, targets = encoded[name], torch.tensor(labels[name], dtype=torch.float32)
        if trains_adapter:
            pad = backbone.tokenizer.pad_token_id
            return TabularSplit(f.numeric, f.categorical, targets, ids=ids[name], pad_id=pad)
        return TabularSplit(f.numeric, f.categorical, targets, text=fraud.encode_texts(f.texts, data.eval_batch_size))

    train_split, valid_split = split("train"), split("valid")
    labelled_valid = _has_both_classes(labels["valid"])
    monitor, direction = ("val/auprc", "max") if labelled_valid else ("val/loss", "min")
    fits: list[tuple[L.Trainer, str]] = []

    def fit(scorer: nn.Module, suffix: str, member: int = 0) -> None:
        if isinstance(scorer, BoostedTrees):
            scorer.fit(train_split.numeric, train_split.targets, trainer.seed + member)
            return
        if member:
            L.seed_everything(trainer.seed + member, workers=True)
        module = TabularModule(scorer, trainer, backbone if trains_adapter else None, pooling, len(texts))
        datamodule = TabularData(train_split, valid_split, data.batch_size, data.eval_batch_size,
                                 trainer.seed + member)
        where = Path(f"{work_dir}{suffix}")
        fits.append(_fit_module(module, datamodule, trainer, monitor, where, mode=direction))

    _fit_detector(fraud.scorer, detector, train_split, fit)
    fraud.scorer.requires_grad_(False).eval()

    # calibration and threshold on the validation rows, scored through the prediction path
    raw = score_inputs(fraud.scorer, fraud.inputs(splits.frames["valid"])[0])
    if labelled_valid:
        fraud.calibration = fit_platt(raw, labels["valid"], log=detector != "classifier")
    valid_scores = fraud.calibration(raw)
    times = splits.frames["valid"][data.time].to_numpy() if data.time else None
    chosen = choose_threshold(valid_scores, threshold.rule, threshold.target,
                              labels["valid"] if uses_labels else None, times)
    if threshold.rule == "precision" and not chosen["met"]:
        log.warning("no threshold reaches precision %.2f on validation; using the most precise one (%.3g)",
                    threshold.target, chosen["valid"].get("precision") or 0)
    card.update(calibration=fraud.calibration.state(), threshold=chosen)

    metrics = {}  # evaluation only: in unsupervised mode the labels are read here and nowhere else
    for name in ("valid", "test"):
        if splits.labels.get(name) is not None:
            scores = valid_scores if name == "valid" else fraud.scores(splits.frames[name])
            metrics[name] = detection_metrics(scores, splits.labels[name], chosen["value"])
    stats = {name: {"rows": len(f), "source": splits.where[name],
                    "frauds": None if splits.labels[name] is None else int(np.nansum(splits.labels[name]))}
             for name, f in splits.frames.items()}
    wall = round(time.perf_counter() - started, 1)
    card["training"] = {
        "splits": stats, "labels_used": uses_labels, "monitor": monitor if fits else None,
        "features": {"numeric": pipeline.numeric_names, "categorical": pipeline.categorical_names, "texts": texts},
        "steps": sum(f.global_step for f, _ in fits), "epochs": [f.current_epoch for f, _ in fits],
        "best_checkpoint": fits[-1][1] if fits else None, "seed": trainer.seed, "wall_time_s": wall,
        "peak_rss_mb": peak_rss_mb(),
        "network": dataclasses.asdict(network), "lr": trainer.lr, "max_epochs": trainer.max_epochs,
        "batch_size": data.batch_size,
    }
    card.update(metrics=metrics, ecomnlp_version=_version(), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    summary = {"out": str(work_dir), "mode": mode, "detector": detector, "threshold": chosen, "metrics": metrics,
               "steps": card["training"]["steps"], "epochs": card["training"]["epochs"], "splits": stats,
               "wall_time_s": wall, "peak_rss_mb": card["training"]["peak_rss_mb"]}
    return fraud, summary


def train_fraud(
    data: FraudData,
    features: dict[str, Any],
    out: str,
    mode: Mode = "supervised",
    detector: Detector | None = None,
    model: str = "minilm-l6",
    network: NetworkSettings = NetworkSettings(),
    threshold: ThresholdSettings = ThresholdSettings(),
    lora: LoraSettings = LoraSettings(),
    trainer: TrainerSettings = FRAUD_TRAINER,
    pooling: Literal["mean", "cls"] = "mean",
) -> dict[str, Any]:
    """Train a fraud-detection task and save the task directory ``out`` (``ecomnlp.load(out)`` gives a ``FraudModel``).

    ``features`` is a ``FeaturePipeline`` spec (numeric, categorical, crosses, templates); templates are the text
    fields, encoded by ``model`` with the task's LoRA adapter (no encoder is loaded without them). The threshold
    and the calibration are chosen on the validation rows and saved in the card with the validation and test metrics.
    """
    fraud, summary = fit_fraud(data, features, mode, detector, model, network, threshold, lora, trainer, pooling,
                               work_dir=out)
    fraud.save(out)
    return summary
