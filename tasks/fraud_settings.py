"""Settings of the fraud-detection task (``tasks/fraud_detection.py``), as YAML configs and ``ecomnlp train-fraud``
mirror them. Plain dataclasses with no heavy imports, so the CLI stays fast."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ecomnlp.config import TrainerSettings

TASK = "fraud_detection"
Mode = Literal["supervised", "semi_supervised", "unsupervised"]
Detector = Literal["classifier", "autoencoder", "deep_svdd", "ecod"]


@dataclass
class FraudData:
    """Where the records come from and how they are split.

    ``train``: CSV / TSV / JSONL / Parquet. ``valid`` / ``test``: files, or else cut from ``train``: the test rows
    first (``test_fraction``, none if 0), then ``valid_fraction`` of the rest. ``split``: ``temporal`` holds out
    the latest rows by ``time``; ``stratified`` keeps the fraud rate (labels are not looked at in unsupervised
    mode: it is then random); ``random``. ``label``: the 0/1 column (null: none). ``time``: numbers in seconds,
    or dates; needed by temporal splits and the alerts_per_day threshold. ``max_train_rows``: a seeded sample of
    the training rows (quick runs); validation and test rows are kept whole.
    """

    train: str
    label: str | None = "label"
    valid: str | None = None
    test: str | None = None
    time: str | None = None
    split: Literal["temporal", "stratified", "random"] = "stratified"
    valid_fraction: float = 0.2
    test_fraction: float = 0.0
    max_train_rows: int | None = None
    max_length: int | None = None
    batch_size: int = 512
    eval_batch_size: int = 4096


@dataclass
class NetworkSettings:
    """The scorer's shape and loss.

    ``hidden``: the classifier MLP's widths, or the autoencoder encoder's (mirrored by its decoder).
    ``bottleneck``: autoencoder / Deep SVDD code width. ``embedding_dim``: largest categorical embedding.
    ``text_dim``: each text field's vector is projected to this width. ``loss``: ``bce`` or ``focal``
    (``focal_gamma``). ``pos_weight``: weight of a fraud in the loss: a number, ``balanced`` (negatives /
    positives), ``sqrt`` (its square root) or null. ``anomaly_weight``: semi-supervised Deep SAD term.
    ``mask``: the autoencoder (and Deep SVDD pretraining) hides each input field with this probability while it
    trains (denoising), so it learns to rebuild a field from the others. ``members``: the classifier as an
    ensemble of this many MLPs, each trained on its own with seed + i (weights, dropout, batch order, early
    stopping), their fraud probabilities averaged. ``trees``: a weight w in [0, 1); above 0 the classifier's
    ensemble gains a member of histogram gradient-boosted trees (sklearn, ``trees_options`` passed to it, fitted on
    the numeric features and saved as tensors, ``tabular.BoostedTrees``), and its fraud probability is w times the
    trees' plus 1 - w times the MLPs' mean.
    """

    hidden: list[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.1
    bottleneck: int = 8
    embedding_dim: int = 16
    text_dim: int = 32
    loss: Literal["bce", "focal"] = "bce"
    pos_weight: float | Literal["balanced", "sqrt"] | None = "sqrt"
    focal_gamma: float = 2.0
    anomaly_weight: float = 1.0
    mask: float = 0.0
    members: int = 1
    trees: float = 0.0
    trees_options: dict[str, Any] = field(default_factory=lambda: {
        "learning_rate": 0.03, "max_iter": 500, "class_weight": "balanced", "early_stopping": False})


@dataclass
class ThresholdSettings:
    """The alert threshold, chosen on validation: ``precision`` (the most frauds caught at validation precision
    >= target), ``alerts_per_day`` (a daily alert budget, over the validation period), or ``alert_rate``
    (a share of the records)."""

    rule: Literal["precision", "alerts_per_day", "alert_rate"] = "precision"
    target: float = 0.9


FRAUD_TRAINER = TrainerSettings(max_epochs=15, lr=1e-3, patience=4, weight_decay=1e-4, log_every_n_steps=50)
