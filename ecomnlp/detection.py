"""Scoring rare events: metrics for heavily imbalanced labels, the decision threshold, calibration,
and the imbalance-aware losses. Shared by fraud detection and any other task that ranks records by a
score and alerts on the top of it.

Scores are "higher = more suspicious" and may be on any scale (logits, reconstruction errors): the
threshold-free metrics only use their order.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import DataError

ThresholdRule = Literal["precision", "alerts_per_day", "alert_rate"]
SECONDS_PER_DAY = 86_400.0


def binary_labels(values: Any, where: str, allow_missing: bool) -> np.ndarray:
    """0/1 labels as float64, NaN where missing (only if ``allow_missing``); anything else raises DataError.

    Accepted: 0/1 numbers, booleans, and the texts "0", "1", "true", "false" (any case).
    """
    import pandas as pd

    raw = pd.Series(values, dtype=object)
    missing = raw.isna() | raw.map(lambda v: isinstance(v, str) and not v.strip())
    text = raw.map(lambda v: str(v).strip().lower() if not isinstance(v, (bool, np.bool_)) else str(bool(v)).lower())
    mapped = text.map({"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "false": 0.0, "true": 1.0})
    bad = np.flatnonzero((mapped.isna() & ~missing).to_numpy())
    if len(bad):
        raise DataError(f"{where}: row {bad[0] + 1}: label {raw.iloc[bad[0]]!r} is not 0/1 (or true/false)")
    if not allow_missing and missing.any():
        first = int(np.flatnonzero(missing.to_numpy())[0])
        raise DataError(f"{where}: row {first + 1}: missing label (supervised mode needs every label; "
                        "use mode semi_supervised for partly labelled data)")
    return np.where(missing, np.nan, mapped.to_numpy(dtype=np.float64, na_value=np.nan))


# --- losses ------------------------------------------------------------------------------------------------

def imbalance_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: float = 1.0,
                   gamma: float = 0.0) -> torch.Tensor:
    """Mean binary cross-entropy with positives weighted ``pos_weight`` times and, for ``gamma`` > 0, the
    focal factor (1 - p_t)^gamma that down-weights the easy, well-classified rows (Lin et al. 2017)."""
    weight = torch.where(targets > 0.5, torch.full_like(targets, pos_weight), torch.ones_like(targets))
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma:
        p_t = torch.exp(-ce)  # the probability given to the true class
        ce = (1 - p_t).pow(gamma) * ce
    return (weight * ce).sum() / weight.sum()


def resolve_pos_weight(option: float | str | None, labels: np.ndarray) -> float:
    """The positive class weight: a number, "balanced" (negatives / positives), "sqrt" (its square root) or None (1)."""
    if option is None:
        return 1.0
    if not isinstance(option, str):
        return float(option)
    positives, negatives = int(np.sum(labels == 1)), int(np.sum(labels == 0))
    if positives == 0:
        raise DataError("no positive training labels: class weights cannot be computed")
    ratio = negatives / positives
    if option == "balanced":
        return ratio
    if option == "sqrt":
        return math.sqrt(ratio)
    raise ValueError(f"pos_weight must be a number, 'balanced', 'sqrt' or null, not {option!r}")


# --- metrics -----------------------------------------------------------------------------------------------

def _order_preserving(scores: np.ndarray) -> torch.Tensor:
    """Scores mapped into [0, 1] by rank (ties kept), so torchmetrics neither applies a sigmoid that would
    saturate large scores into ties nor loses float64 resolution."""
    from scipy.stats import rankdata

    return torch.from_numpy(rankdata(scores, method="average") / max(1, len(scores)))


def precision_at_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of frauds among the ``k`` highest-scored records (the alerts a team with budget k would see)."""
    k = min(k, len(scores))
    top = np.argsort(-scores, kind="stable")[:k]
    return float(labels[top].mean()) if k else float("nan")


def detection_metrics(scores: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray,
                      threshold: float | None = None, min_precision: float = 0.9,
                      top_k: Sequence[int] = (50, 100, 500)) -> dict[str, Any]:
    """AUROC, AUPRC (average precision), recall at precision >= ``min_precision``, precision of the top-k
    alerts, and the confusion matrix at ``threshold`` (score >= threshold is an alert). Rows with a missing
    label are left out; the threshold-free metrics need both classes."""
    from torchmetrics.classification import (BinaryAUROC, BinaryAveragePrecision, BinaryConfusionMatrix,
                                             BinaryRecallAtFixedPrecision)

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    known = ~np.isnan(labels)
    scores, labels = scores[known], labels[known]
    y = torch.from_numpy(labels.astype(np.int64))
    out: dict[str, Any] = {"rows": int(len(labels)), "positives": int(labels.sum())}
    if 0 < out["positives"] < len(labels):
        ranked = _order_preserving(scores)
        recall, _ = BinaryRecallAtFixedPrecision(min_precision=min_precision)(ranked, y)
        out.update(auroc=BinaryAUROC()(ranked, y).item(), auprc=BinaryAveragePrecision()(ranked, y).item(),
                   **{f"recall@precision{min_precision:g}": recall.item()})
        out.update({f"precision@{k}": precision_at_k(scores, labels, k) for k in top_k})
    if threshold is not None and len(labels):
        alerts = torch.from_numpy((scores >= threshold).astype(np.int64))
        (tn, fp), (fn, tp) = BinaryConfusionMatrix()(alerts, y).tolist()
        out["at_threshold"] = {"threshold": float(threshold), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                               "precision": tp / (tp + fp) if tp + fp else None,
                               "recall": tp / (tp + fn) if tp + fn else None, "alerts": tp + fp}
    return out


# --- calibration -------------------------------------------------------------------------------------------

@dataclass
class Calibration:
    """Raw score -> reported score. ``platt``: sigmoid(a * x + b), x the raw score or, for non-negative anomaly
    scores (``log``), its log; a probability of fraud fitted on labelled validation rows. ``none``: the raw score
    (an anomaly score with no labels to calibrate it on)."""

    method: Literal["platt", "none"] = "none"
    a: float = 1.0
    b: float = 0.0
    log: bool = False

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        if self.method == "none":
            return raw
        x = np.log(np.maximum(raw, 1e-12)) if self.log else raw
        return 1.0 / (1.0 + np.exp(-(self.a * x + self.b)))

    def state(self) -> dict[str, Any]:
        return asdict(self)


def fit_platt(raw: np.ndarray, labels: np.ndarray, log: bool = False) -> Calibration:
    """Platt scaling on labelled rows (missing labels left out): a one-feature logistic regression."""
    from sklearn.linear_model import LogisticRegression

    known = ~np.isnan(labels)
    x = np.asarray(raw, dtype=np.float64)[known]
    x = np.log(np.maximum(x, 1e-12)) if log else x
    y = labels[known].astype(int)
    if len(set(y.tolist())) < 2:
        raise ValueError("Platt scaling needs labelled rows of both classes")
    fit = LogisticRegression(C=1e4, max_iter=1000).fit(x[:, None], y)
    return Calibration("platt", float(fit.coef_[0, 0]), float(fit.intercept_[0]), log)


# --- the decision threshold --------------------------------------------------------------------------------

def time_span_days(times: Sequence[Any] | np.ndarray) -> float:
    """Days covered by a time column: numbers are seconds (e.g. ULB's ``Time``); anything else is parsed as dates."""
    import pandas as pd

    series = pd.Series(times)
    if pd.api.types.is_numeric_dtype(series.dtype):
        seconds = series.astype(float)
    else:
        stamps = pd.to_datetime(series, errors="raise", utc=True)
        seconds = (stamps - stamps.min()).dt.total_seconds()
    return float(seconds.max() - seconds.min()) / SECONDS_PER_DAY


def choose_threshold(scores: np.ndarray, rule: ThresholdRule, target: float, labels: np.ndarray | None = None,
                     times: Sequence[Any] | None = None) -> dict[str, Any]:
    """The alert threshold on validation scores (an alert is score >= threshold).

    ``precision``: the lowest threshold (most frauds caught) whose validation precision is at least
    ``target``; if no threshold reaches it, the one with the highest precision (``met`` false).
    ``alerts_per_day``: as many alerts as the budget ``target`` per day allows over the validation period
    (``times``: the time column). ``alert_rate``: alerts for a share ``target`` of the records.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        raise ValueError("no validation rows to choose the threshold on")
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    result: dict[str, Any] = {"rule": rule, "target": target}
    if rule == "precision":
        if labels is None or np.isnan(labels).all() or not np.nansum(labels):
            raise ValueError("threshold rule 'precision' needs labelled validation rows with frauds among them; "
                             "use alerts_per_day or alert_rate")
        known = ~np.isnan(labels[order])
        s, y = ranked[known], labels[order][known]
        tp, alerts = np.cumsum(y), np.arange(1, len(y) + 1)
        last = np.r_[s[1:] != s[:-1], True]  # a threshold takes every tied score at once
        precision = tp / alerts
        ok = np.flatnonzero(last & (precision >= target))
        if len(ok):
            k, met = ok[-1], True
        else:
            candidates = np.flatnonzero(last)
            best = precision[candidates].max()
            k, met = candidates[precision[candidates] == best][-1], False
        result.update(value=float(s[k]), met=bool(met))
    elif rule in ("alerts_per_day", "alert_rate"):
        if rule == "alerts_per_day":
            if times is None:
                raise ValueError("threshold rule 'alerts_per_day' needs a time column (data.time)")
            days = time_span_days(times)
            if days <= 0:
                raise ValueError("the validation rows span no time: alerts_per_day cannot be applied")
            budget = target * days
            result["valid_days"] = days
        else:
            if not 0 < target <= 1:
                raise ValueError(f"alert_rate must be in (0, 1], not {target}")
            budget = target * len(scores)
        k = int(min(len(scores), max(1, math.floor(budget))))
        result["value"] = float(ranked[k - 1])
    else:
        raise ValueError(f"unknown threshold rule {rule!r}; use precision, alerts_per_day or alert_rate")
    alerts = scores >= result["value"]
    valid = {"rows": int(len(scores)), "alerts": int(alerts.sum())}
    if "valid_days" in result:
        valid["alerts_per_day"] = valid["alerts"] / result["valid_days"]
    if labels is not None and not np.isnan(labels).all() and np.nansum(labels):
        known = ~np.isnan(labels)
        tp = float(np.sum(alerts & known & (labels == 1)))
        flagged = float(np.sum(alerts & known))
        valid.update(precision=tp / flagged if flagged else None, recall=tp / float(np.nansum(labels)))
    result["valid"] = valid
    return result
