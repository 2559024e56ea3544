"""Anomaly detectors for records with few or no labels, and the classical baselines.

Saveable (their whole state is tensors, written as safetensors; no pickle):
  - ``AutoEncoder``: reconstruction error of the fused representation (``tabular.FusedEncoder``): numeric
    values (squared error), categorical columns (cross-entropy), text vectors (squared error, standardised);
    each field's error is divided by its mean on the training rows, and the score is their mean. With ``mask``
    (denoising), training hides each field with that probability, so a field is rebuilt from the others.
  - ``DeepSVDD``: squared distance of the autoencoder's code to the centre of the training codes (Ruff et al.
    2018), after autoencoder pretraining; bias-free encoder so it cannot map everything onto the centre.
  - ``Ecod``: ECOD (Li et al. 2022) on the numeric features and text vectors, kept as the column-sorted training
    matrix. A record gets the tail probabilities it would get appended alone to the training rows, which is what
    PyOD's ``ECOD.decision_function`` gives for a batch of one row; PyOD scores a batch against the training rows
    *and the batch*, so its scores change with the batch.
With a few labels (semi-supervised), known frauds in training add the Deep SAD term (Ruff et al. 2020)
``anomaly_weight / error`` to the autoencoder and Deep SVDD losses, pushing their error up.

Baselines only (``baseline_scores``): PyOD ``IForest`` (sklearn's trees cannot be saved without pickle) and
PyOD ``ECOD`` as PyOD scores it; sklearn logistic regression and histogram gradient-boosted trees (supervised).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .tabular import FusedEncoder, Inputs, mlp

SAVEABLE = ("autoencoder", "deep_svdd", "ecod")
UNSUPERVISED_BASELINES = ("iforest", "ecod")
# A small grid per supervised baseline: the bench keeps the entry with the best validation AUPRC.
SUPERVISED_BASELINES: dict[str, list[dict[str, Any]]] = {
    "logistic_regression": [{"C": 1.0}, {"C": 1.0, "class_weight": "balanced"}, {"C": 0.1}],
    "gradient_boosting": [
        {"learning_rate": 0.1, "max_iter": 200, "max_leaf_nodes": 31, "early_stopping": False},
        {"learning_rate": 0.1, "max_iter": 200, "max_leaf_nodes": 15, "l2_regularization": 1.0,
         "early_stopping": False},
        {"learning_rate": 0.05, "max_iter": 300, "class_weight": "balanced", "early_stopping": False},
    ],
}
_EPS = 1e-6


def _sad(distance: torch.Tensor, targets: torch.Tensor, anomaly_weight: float) -> torch.Tensor:
    """Mean loss: the distance (error) for normal and unlabelled rows, ``anomaly_weight / distance`` for known
    frauds."""
    fraud = targets > 0.5  # NaN (no label) compares False
    return torch.where(fraud, anomaly_weight / (distance + _EPS), distance).mean()


class AutoEncoder(nn.Module):
    """Fused vector ──encoder──▶ code (``bottleneck`` wide) ──decoder──▶ the record's numeric values,
    categorical columns and text vectors."""

    def __init__(self, fused: FusedEncoder, numeric: int, cardinalities: Sequence[int], texts: int = 0,
                 text_size: int = 0, hidden: Sequence[int] = (64,), bottleneck: int = 16, bias: bool = True,
                 anomaly_weight: float = 1.0, mask: float = 0.0) -> None:
        super().__init__()
        self.fused, self.anomaly_weight, self.mask = fused, anomaly_weight, mask
        self.encoder = mlp([fused.out_dim, *hidden, bottleneck], bias=bias, activation=nn.LeakyReLU)
        widths = [bottleneck, *reversed(hidden)]
        self.decoder = nn.Sequential(nn.LeakyReLU(), *mlp(widths, activation=nn.LeakyReLU), nn.LeakyReLU())
        self.numeric_out = nn.Linear(widths[-1], numeric)
        self.categorical_out = nn.ModuleList(nn.Linear(widths[-1], c) for c in cardinalities)
        self.text_out = nn.Linear(widths[-1], texts * text_size) if texts else None
        self.register_buffer("text_center", torch.zeros(texts, text_size))
        self.register_buffer("text_scale", torch.ones(texts, text_size))
        self.register_buffer("field_scale", torch.ones(numeric + len(cardinalities) + texts))

    def code(self, inputs: Inputs) -> torch.Tensor:
        return self.encoder(self.fused(inputs))

    def masked(self, inputs: Inputs) -> Inputs:
        """``inputs`` with each field hidden with probability ``mask``: numeric values set to 0 (the mean of a
        standardised column), categories to unknown (0), text vectors to their training mean."""
        keep = {k: torch.rand(v.shape[:2], device=v.device) >= self.mask for k, v in inputs.items() if v is not None}
        out = {"numeric": inputs["numeric"] * keep["numeric"],
               "categorical": inputs["categorical"] * keep["categorical"], "text": inputs["text"]}
        if inputs["text"] is not None:
            out["text"] = torch.where(keep["text"][..., None], inputs["text"], self.text_center)
        return out

    def field_errors(self, inputs: Inputs, seen: Inputs | None = None) -> torch.Tensor:
        """[n, fields]: squared error per numeric column, cross-entropy per categorical column, mean squared error
        per (standardised) text vector, reconstructing ``inputs`` from ``seen`` (default: ``inputs``)."""
        hidden = self.decoder(self.code(seen or inputs))
        errors = [(self.numeric_out(hidden) - inputs["numeric"]).pow(2)]
        categorical = inputs["categorical"]
        errors += [nn.functional.cross_entropy(head(hidden), categorical[:, i], reduction="none")[:, None]
                   for i, head in enumerate(self.categorical_out)]
        if self.text_out is not None:
            target = (inputs["text"] - self.text_center) / self.text_scale
            errors.append((self.text_out(hidden).view_as(target) - target).pow(2).mean(-1))
        return torch.cat(errors, dim=1)

    def score(self, inputs: Inputs) -> torch.Tensor:
        return (self.field_errors(inputs) / self.field_scale).mean(1)

    def loss(self, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
        seen = self.masked(inputs) if self.training and self.mask else inputs  # denoising: fields from the others
        return _sad(self.field_errors(inputs, seen).mean(1), targets, self.anomaly_weight)

    @torch.no_grad()
    def set_text_stats(self, text: torch.Tensor | None) -> None:
        """Standardise the text vectors it reconstructs with the training rows' mean and std."""
        if text is not None and len(text):
            self.text_center.copy_(text.mean(0))
            self.text_scale.copy_(text.std(0).clamp(min=1e-4))

    @torch.no_grad()
    def set_field_scale(self, errors: torch.Tensor) -> None:
        """Each field's mean error on the training rows, so every field counts alike in the score."""
        self.field_scale.copy_(errors.mean(0).clamp(min=_EPS))


class DeepSVDD(nn.Module):
    """Squared distance of the (pretrained, bias-free) autoencoder's code to the centre of the normal training codes."""

    def __init__(self, autoencoder: AutoEncoder, anomaly_weight: float = 1.0) -> None:
        super().__init__()
        self.autoencoder, self.anomaly_weight = autoencoder, anomaly_weight
        self.register_buffer("center", torch.zeros(autoencoder.encoder[-1].out_features))

    def score(self, inputs: Inputs) -> torch.Tensor:
        return (self.autoencoder.code(inputs) - self.center).pow(2).sum(1)

    def loss(self, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
        return _sad(self.score(inputs), targets, self.anomaly_weight)

    @torch.no_grad()
    def set_center(self, codes: torch.Tensor, eps: float = 0.1) -> None:
        """The mean code, with coordinates near 0 moved to +-eps (a zero centre is trivially reachable)."""
        c = codes.mean(0)
        c[(c.abs() < eps) & (c < 0)] = -eps
        c[(c.abs() < eps) & (c >= 0)] = eps
        self.center.copy_(c)

    def train_encoder_only(self) -> None:
        """Freeze everything but the encoder (embeddings and text projections too), for the SVDD phase."""
        self.autoencoder.requires_grad_(False)
        self.autoencoder.encoder.requires_grad_(True)


def detector_matrix(inputs: Inputs) -> torch.Tensor:
    """What the classical detectors see: numeric features ⊕ text vectors (categorical columns are left out)."""
    parts = [inputs["numeric"].float()]
    if inputs.get("text") is not None:
        parts.append(inputs["text"].flatten(1).float())
    return torch.cat(parts, dim=1)


class Ecod(nn.Module):
    """ECOD scored against the training rows only (see the module docstring); state: sorted training columns."""

    def __init__(self, rows: int, dims: int) -> None:
        super().__init__()
        self.register_buffer("sorted_columns", torch.zeros(dims, rows))
        self.register_buffer("skew_sign", torch.zeros(dims))

    def fit(self, matrix: torch.Tensor) -> Ecod:
        from scipy.stats import skew

        x = matrix.double().numpy()
        self.sorted_columns = torch.from_numpy(np.sort(x, axis=0).T.copy()).float()
        self.skew_sign = torch.from_numpy(np.sign(np.nan_to_num(skew(x, axis=0)))).float()
        return self

    def score(self, inputs: Inputs) -> torch.Tensor:
        x = detector_matrix(inputs).T.contiguous()  # [dims, m]
        n = self.sorted_columns.shape[1]
        at_most = torch.searchsorted(self.sorted_columns, x, right=True).double()
        at_least = n - torch.searchsorted(self.sorted_columns, x, right=False).double()
        left, right = -torch.log((at_most + 1) / (n + 1)), -torch.log((at_least + 1) / (n + 1))
        s = self.skew_sign[:, None].double()
        skewed = left * -torch.sign(s - 1) + right * torch.sign(s + 1)  # PyOD's rule, including skew 0
        return torch.maximum(torch.maximum(left, right), skewed).sum(0)

    def loss(self, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
        raise TypeError("ECOD is fitted, not trained")


def baseline_scores(name: str, train: np.ndarray, evaluate: Sequence[np.ndarray], labels: np.ndarray | None = None,
                    seed: int = 0, options: dict[str, Any] | None = None) -> list[np.ndarray]:
    """Fit a classical baseline on ``train`` and score each matrix of ``evaluate`` (higher = more suspicious).

    Unsupervised (``labels`` unused): ``iforest``, ``ecod`` (PyOD). Supervised: ``logistic_regression``,
    ``gradient_boosting`` (sklearn), with ``options`` passed to the estimator.
    """
    options = options or {}
    if name in UNSUPERVISED_BASELINES:
        from pyod.models.ecod import ECOD
        from pyod.models.iforest import IForest

        detector = IForest(random_state=seed, n_jobs=1, **options) if name == "iforest" else ECOD(**options)
        detector.fit(train)
        return [detector.decision_function(x) for x in evaluate]
    if name in SUPERVISED_BASELINES:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression

        if labels is None:
            raise ValueError(f"baseline {name} is supervised: give the training labels")
        model = (LogisticRegression(max_iter=2000, **options) if name == "logistic_regression"
                 else HistGradientBoostingClassifier(random_state=seed, **options))
        model.fit(train, labels.astype(int))
        return [model.decision_function(x) if name == "logistic_regression" else model.predict_proba(x)[:, 1]
                for x in evaluate]
    raise ValueError(f"unknown baseline {name!r}; use {[*UNSUPERVISED_BASELINES, *SUPERVISED_BASELINES]}")
