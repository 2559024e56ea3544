"""One section of the suite report (``report.evaluate_suite``) per kind of task: the model's metrics on the
entry's data, the same metrics for a classical baseline on the same data, the figures of both (the model's in
the entry's folder, the baseline's under ``baseline/``, same file names) and, where the kind explains its
predictions, a few explained examples.

Each section is ``section(model, entry, folder, baseline)`` -> ``{"ours", "baseline" (None without one),
"table" (the metric names of the table; "a/b" is ``metrics["a"]["b"]``), "explanations"}``; the metrics come from
the kind's own evaluation code.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from .evaluation import plot_bars, plot_lines

if TYPE_CHECKING:
    import pandas as pd

    from .chatbot import SupportBot
    from .predictor import TaskModel
    from .tasks.fraud_detection import FraudModel
    from .tasks.recommendation import RecommendationModel

Section = dict[str, Any]
EXPLAINED_EXAMPLES = 3
TEXT_METRICS = ("accuracy", "f1_macro", "f1_micro", "mae", "examples")
RANKING_KS = (1, 5, 10, 20)
RANKING_METRICS = ("ndcg", "hit_rate", "precision", "recall")


def _settings(cls: type, data: Mapping[str, Any]) -> Any:
    """``cls(**data)``, an unknown or missing field being a ValueError that names it."""
    try:
        return cls(**data)
    except TypeError as err:
        raise ValueError(f"data: {err}") from None


# --- text classification -------------------------------------------------------------------------------------

def _tfidf_baseline(trained: TaskModel, test_rows: Any, test_targets: Any, out_dir: Path) -> dict[str, Any]:
    """TF-IDF + LR fitted on the task's training file, on the same test rows, or why there is none."""
    from .baselines import describe, tfidf_logits
    from .data import encode_targets, load_rows

    task, card = trained.task, trained.card
    train_file = card.get("training", {}).get("train_file")
    if getattr(task, "multi_label", False) or len(task.schema.text) != 1:
        return {"skipped": "the TF-IDF baseline covers single-label, single-text tasks"}
    if not train_file or not Path(train_file).exists():
        return {"skipped": f"training file {train_file!r} is not available here"}
    mapping = card.get("columns", {})
    train = load_rows(train_file, task, mapping, "skip")
    train_targets = encode_targets(train, task, mapping.get(task.schema.label, task.schema.label))
    logits = tfidf_logits(train.texts[0], train_targets, test_rows.texts[0], len(task.labels))
    return {**describe(train.texts[0]), **task.evaluate(logits, test_targets, out_dir)}


def text_section(trained: TaskModel, entry: Mapping[str, Any], folder: Path, baseline: bool) -> Section:
    """Classification metrics and confusion matrices on a labelled file; occlusion explanations of its first rows."""
    from .evaluation import evaluate_loaded

    ours, rows, targets = evaluate_loaded(trained, entry["data"], str(folder), entry.get("columns"))
    base = _tfidf_baseline(trained, rows, targets, folder / "baseline") if baseline else None
    examples = [dict(zip(trained.task.schema.text, t)) for t in zip(*(f[:EXPLAINED_EXAMPLES] for f in rows.texts))]
    explained = [{"input": e, **x} for e, x in zip(examples, trained.explain(examples))]
    return {"ours": ours, "baseline": base, "table": [k for k in TEXT_METRICS if k in ours], "explanations": explained}


# --- fraud detection -----------------------------------------------------------------------------------------

def _fraud_frames(model: FraudModel, data: str | Mapping[str, Any]) -> tuple[dict[str, pd.DataFrame], str]:
    """The records to score ("test") and, where available, those a baseline is fitted on ("train") and picks its
    threshold on ("valid"); and what the test records are. ``data``: a file, or the task's data settings
    (``FraudData`` fields; label and time default to the card's), split as in training."""
    from .tabular import read_frame

    card = model.card
    if isinstance(data, Mapping):
        from .tasks.fraud_detection import FraudData, load_splits

        settings = _settings(FraudData, {"label": card["columns"]["label"], "time": card["columns"]["time"], **data})
        splits = load_splits(settings, card["mode"], card["training"]["seed"])
        if "test" not in splits.frames:
            raise ValueError("data: no test records (set test or test_fraction)")
        return splits.frames, splits.where["test"]
    frames = {"test": read_frame(data)}
    train = Path(card["training"]["splits"]["train"]["source"]).expanduser()
    if train.is_file():
        frames["train"] = read_frame(train)
    return frames, str(data)


def _fraud_labels(model: FraudModel, frame: pd.DataFrame, where: str, allow_missing: bool = True) -> np.ndarray:
    """The 0/1 labels (NaN: missing) of the card's label column."""
    from .data import DataError
    from .detection import binary_labels

    column = model.card["columns"]["label"]
    if column is None or column not in frame.columns:
        raise DataError(f"{where}: no label column {column!r} (the task's); the data has columns {list(frame.columns)}")
    return binary_labels(frame[column], where, allow_missing)


def _detection_curves(scores: np.ndarray, labels: np.ndarray, metrics: Mapping[str, Any], out: Path,
                      who: str) -> list[str]:
    """pr_curve.png and roc_curve.png of the scores of the labelled records; none without both classes."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    if "auroc" not in metrics:
        return []
    known = ~np.isnan(labels)
    y, s = labels[known].astype(int), scores[known]
    precision, recall, _ = precision_recall_curve(y, s)
    fpr, tpr, _ = roc_curve(y, s)
    return [plot_lines({who: (recall, precision)}, out / "pr_curve.png", "recall", "precision",
                       f"{who} — AUPRC {metrics['auprc']:.4f}", style="steps").name,
            plot_lines({who: (fpr, tpr)}, out / "roc_curve.png", "false positive rate", "true positive rate",
                       f"{who} — AUROC {metrics['auroc']:.4f}", diagonal=True).name]


def _fraud_baseline(model: FraudModel, frames: dict[str, pd.DataFrame], test_labels: np.ndarray,
                    out: Path) -> dict[str, Any]:
    """A classical detector on the task's numeric features, fitted on the training records (the split's, or the
    card's whole training file): logistic regression for a supervised task, PyOD IsolationForest otherwise; its
    threshold follows the task's rule, on the validation records if there are any, else on the training records."""
    from .detection import choose_threshold, detection_metrics
    from .detectors import baseline_scores

    card = model.card
    source = card["training"]["splits"]["train"]["source"]
    if "train" not in frames:
        return {"skipped": f"training file {source!r} is not available here"}
    if not model.pipeline.numeric_names:
        return {"skipped": "the task has no numeric features for a classical detector"}
    supervised = card["mode"] == "supervised"
    name, label = ("logistic_regression", "logistic regression") if supervised else ("iforest", "PyOD IsolationForest")
    x = {split: model.pipeline.transform(frame).numeric.numpy() for split, frame in frames.items()}
    fit_labels = _fraud_labels(model, frames["train"], source, allow_missing=False) if supervised else None
    pick = "valid" if "valid" in frames else "train"
    test_scores, pick_scores = baseline_scores(name, x["train"], [x["test"], x[pick]], fit_labels,
                                               card["training"]["seed"])
    rule = card["threshold"]
    pick_labels = _fraud_labels(model, frames[pick], source) if rule["rule"] == "precision" else None
    times = frames[pick][card["columns"]["time"]].to_numpy() if rule["rule"] == "alerts_per_day" else None
    chosen = choose_threshold(pick_scores, rule["rule"], rule["target"], pick_labels, times)
    metrics = detection_metrics(test_scores, test_labels, chosen["value"])
    return {"name": label, "features": f"the task's {len(model.pipeline.numeric_names)} numeric features",
            "train_examples": len(frames["train"]), "threshold_chosen_on": f"{pick} records", **metrics,
            "figures": _detection_curves(test_scores, test_labels, metrics, out, f"baseline: {label}")}


def fraud_section(model: FraudModel, entry: Mapping[str, Any], folder: Path, baseline: bool) -> Section:
    """Detection metrics (AUROC, AUPRC, recall at precision 0.9, precision of the top-k alerts, the confusion at
    the saved threshold), PR and ROC curves, and the fields behind the highest-scored records."""
    from .detection import detection_metrics

    frames, where = _fraud_frames(model, entry["data"])
    test = frames["test"]
    labels = _fraud_labels(model, test, where)
    scores = model.scores(test)
    metrics = detection_metrics(scores, labels, model.threshold)  # as FraudModel.evaluate
    ours = {"task": model.card["task"], "data": where, **metrics,
            "figures": _detection_curves(scores, labels, metrics, folder, "ours")}
    base = _fraud_baseline(model, frames, labels, folder / "baseline") if baseline else None
    top = np.argsort(-scores, kind="stable")[:EXPLAINED_EXAMPLES]
    explained = [{"row": int(test.index[i]) + 1, "label": None if np.isnan(labels[i]) else int(labels[i]), **x}
                 for i, x in zip(top, model.score(test.iloc[top]))]
    counts = ["rows", "positives"]
    table = [k for k, v in metrics.items() if isinstance(v, (int, float)) and k not in counts]
    table += [f"at_threshold/{k}" for k in metrics.get("at_threshold", {})] + counts
    return {"ours": ours, "baseline": base, "table": table, "explanations": explained}


# --- recommendation ------------------------------------------------------------------------------------------

def _reco_test(model: RecommendationModel, data: str | Mapping[str, Any]) -> tuple[pd.DataFrame, str]:
    """The held-out interactions and what they are. ``data``: a file (every row an interaction, columns as the
    card maps them), or the task's data settings (``RecoData`` fields; columns default to the card's), split as
    in training."""
    from .interactions import read_interactions

    columns = model.card["columns"]
    if isinstance(data, Mapping):
        from .tasks.recommendation import RecoData, load_reco_splits

        settings = _settings(RecoData, {"columns": columns, **data})
        splits = load_reco_splits(settings)
        if "test" not in splits.frames:
            raise ValueError("data: no test interactions (set test or test_fraction)")
        return splits.frames["test"], f"{splits.where['test']} of {settings.interactions}"
    return read_interactions(data, columns=columns).frame, str(data)


def _at_ks(evaluate: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    """``RANKING_METRICS`` at each of ``RANKING_KS`` (``evaluate(k)``: the metrics at k), the AUC and the users."""
    out: dict[str, Any] = {}
    for k in RANKING_KS:
        metrics = evaluate(k)
        out.update({f"{name}@{k}": metrics.get(f"{name}@{k}") for name in RANKING_METRICS})
    return {**out, "auc": metrics["auc"], "users": metrics["users"]}


def _ndcg_figure(metrics: Mapping[str, Any], out: Path, who: str) -> str:
    ndcg = [metrics[f"ndcg@{k}"] for k in RANKING_KS]
    return plot_lines({who: (RANKING_KS, ndcg)}, out / "ndcg_at_k.png", "K", "nDCG@K", f"{who} — nDCG@K",
                      style="points").name


def recommendation_section(model: RecommendationModel, entry: Mapping[str, Any], folder: Path,
                           baseline: bool) -> Section:
    """nDCG, hit rate, precision and recall at K = 1, 5, 10, 20 (``RecommendationModel.evaluate``) and the nDCG@K
    curve; the baseline ranks by popularity under the same protocol."""
    test, where = _reco_test(model, entry["data"])
    ours = {"task": model.card["task"], "data": where, **_at_ks(lambda k: model.evaluate(test, k))}
    ours["figures"] = [_ndcg_figure(ours, folder, "ours")]
    base = None
    if baseline:
        popular = model.popularity()
        base = {"name": "most popular", "features": "item interaction counts",
                "train_examples": len(model.histories.items),
                **_at_ks(lambda k: model.evaluate(test, k, item_scores=popular))}
        base["figures"] = [_ndcg_figure(base, folder / "baseline", "baseline: most popular")]
    table = [f"{name}@{k}" for name in RANKING_METRICS for k in RANKING_KS] + ["auc", "users"]
    return {"ours": ours, "baseline": base, "table": table, "explanations": []}


# --- support chat --------------------------------------------------------------------------------------------

def _rates_figure(metrics: Mapping[str, Any], k: int, out: Path, who: str) -> str:
    rates = {f"recall@{k}": metrics[f"recall@{k}"], "hand-off (out of KB)": metrics["handoff_rate"],
             "false hand-off": metrics["false_handoff_rate"], "key fact": metrics["key_fact_rate"]}
    return plot_bars(rates, out / "rates.png", who).name


def chat_section(bot: SupportBot, entry: Mapping[str, Any], folder: Path, baseline: bool) -> Section:
    """Retrieval recall@k, hand-off rates and the key-fact rate of the replies (``chatbot.evaluate_bot``) on a
    questions file; ``limit`` caps the replies generated, ``max_new_tokens`` their length (default 48). The
    baseline is the same bot with its LoRA adapter switched off."""
    from .chat_data import load_questions
    from .chat_training import TASK
    from .chatbot import evaluate_bot

    questions = load_questions(entry["data"])
    options = {"max_new_tokens": entry.get("max_new_tokens", 48), "replies": entry.get("limit")}
    ours = {"task": TASK, "data": str(entry["data"]), **evaluate_bot(bot, questions, **options)}
    ours["figures"] = [_rates_figure(ours, bot.top_k, folder, "ours")]
    base = None
    if baseline:
        bot.use_adapter = False
        try:
            base = {"name": "the same bot with its LoRA adapter off", "features": "the same retrieval and hand-off",
                    **evaluate_bot(bot, questions, **options)}
        finally:
            bot.use_adapter = True
        base["figures"] = [_rates_figure(base, bot.top_k, folder / "baseline", "baseline: LoRA adapter off")]
    table = [f"recall@{bot.top_k}", "handoff_rate", "false_handoff_rate", "key_fact_rate", "questions", "out_of_kb",
             "replies"]
    return {"ours": ours, "baseline": base, "table": table, "explanations": []}
