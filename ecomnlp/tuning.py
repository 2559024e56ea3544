"""Cross-validation and a small hyper-parameter search for one task.

``cross_validate`` scores a train config by k-fold cross-validation on its training rows.
``search`` tries learning rates, LoRA ranks and LoRA dropouts with Optuna (seeded TPE) and
writes the config with the best values as ``best.yaml``, plus every trial in ``trials.json``.
"""
from __future__ import annotations

import dataclasses
import random
import statistics
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import yaml

from .artifact import write_json_atomic, write_text_atomic
from .classification import TextClassification, label_text
from .config import TrainerSettings
from .task import build_task
from .training import monitored_metric, train, training_rows

if TYPE_CHECKING:
    import optuna

# search-space key -> (config section, field): where a searched value goes in the config
FIELDS = {"lr": ("trainer", "lr"), "r": ("lora", "r"), "dropout": ("lora", "dropout")}
DEFAULT_SPACE = {"lr": [1e-4, 3e-3], "r": [4, 8, 16], "dropout": [0.0, 0.2]}
_RULES: dict[str, tuple[str, Callable[[list[float]], bool]]] = {
    "lr": ("[low, high] with 0 < low < high, searched log-uniformly", lambda v: len(v) == 2 and 0 < v[0] < v[1]),
    "r": ("a list of LoRA ranks, whole numbers >= 1", lambda v: len(v) > 0 and all(x == int(x) >= 1 for x in v)),
    "dropout": ("[low, high] with 0 <= low < high < 1, searched uniformly",
                lambda v: len(v) == 2 and 0 <= v[0] < v[1] < 1),
}


def fold_indices(n: int, folds: int, seed: int, labels: Sequence[Any] | None = None) -> list[list[int]]:
    """Row indices 0..n-1 in ``folds`` disjoint parts whose sizes differ by at most one (seeded).

    With ``labels`` the parts are stratified: each label's rows are dealt out evenly over them.
    """
    if not 2 <= folds <= n:
        raise ValueError(f"folds must be between 2 and the number of training rows ({n}), not {folds}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    if labels is not None:
        order.sort(key=lambda i: label_text(labels[i]))  # a stable sort: each label's rows stay shuffled
    return [sorted(order[k::folds]) for k in range(folds)]


def _score(metrics: dict[str, float], name: str) -> float:
    if name not in metrics:
        raise ValueError(f"the monitored metric '{name}' is not a validation metric of the task: {sorted(metrics)}")
    return metrics[name]


def cross_validate(config_args: dict[str, Any], folds: int = 5, seed: int = 42) -> dict[str, Any]:
    """k-fold cross-validation of one train config on its training rows only.

    ``config_args`` are ``train``'s keyword arguments, e.g. from ``ecomnlp.cli.train_arguments``.
    The training file's checked rows (at most ``data.max_train_examples``, sampled as ``train``
    does) are split into ``folds`` parts, stratified by label for single-label classification.
    Each part is scored by a model trained on the other parts. ``data.valid`` and ``data.test``
    are not read. Returns the monitored metric's name, each fold's validation metrics, and the
    metric's mean and population standard deviation over the folds.
    """
    data, settings = config_args["data"], config_args.get("trainer", TrainerSettings())
    task = build_task(config_args["task"], config_args.get("task_options"))
    pool, _ = training_rows(task, data, settings.seed)
    stratify = isinstance(task, TextClassification) and not task.multi_label
    if stratify:
        single = sorted(label for label, n in Counter(map(label_text, pool.labels)).items() if n == 1)
        if single:
            raise ValueError(f"{pool.path}: label(s) {single} have a single row; cross-validation needs at "
                             "least 2 rows of every label, so that each fold trains on every label")
    metric = monitored_metric(task, settings).removeprefix("val/")
    parts = fold_indices(len(pool), folds, seed, pool.labels if stratify else None)
    results, scores = [], []
    with tempfile.TemporaryDirectory(prefix="ecomnlp-cv-") as work:
        for k, held_out in enumerate(parts, start=1):
            rest = sorted(set(range(len(pool))) - set(held_out))
            summary = train(**{**config_args, "data": dataclasses.replace(data, test=None),
                               "out": f"{work}/fold-{k}", "rows": (pool.subset(rest), pool.subset(held_out))})
            results.append(summary["metrics"]["valid"])
            scores.append(_score(results[-1], metric))
    return {"metric": metric, "folds": results, "mean": statistics.fmean(scores), "std": statistics.pstdev(scores)}


def check_space(space: dict[str, Any]) -> dict[str, list[float] | list[int]]:
    """The search space with its values checked (a ValueError says what is expected); ranks as ints."""
    if not space or not set(space) <= set(FIELDS):
        raise ValueError(f"search space keys must be some of {sorted(FIELDS)}, got {sorted(space)}; "
                         f"e.g. {DEFAULT_SPACE}")
    for key, values in space.items():
        expected, rule = _RULES[key]
        numbers = isinstance(values, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not (numbers and rule(list(values))):
            raise ValueError(f"search space '{key}' must be {expected}, got {values!r}")
    return {key: [int(v) for v in values] if key == "r" else [float(v) for v in values]
            for key, values in space.items()}


def _with_values(args: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``train`` arguments with the searched values in their config sections."""
    args = dict(args)
    for key, value in values.items():
        section, field = FIELDS[key]
        args[section] = dataclasses.replace(args[section], **{field: value})
    return args


def _suggest(trial: optuna.Trial, key: str, values: list[Any]) -> Any:
    if key == "r":
        return trial.suggest_categorical(key, values)
    return trial.suggest_float(key, values[0], values[1], log=key == "lr")


def search(config: str, out: str, trials: int = 10, space: dict[str, list[float]] | None = None,
           folds: int | None = None, seed: int = 42) -> dict[str, Any]:
    """Search learning rate, LoRA rank and LoRA dropout for the train config file ``config``.

    Optuna's TPE sampler, seeded; its first min(10, trials // 2) trials are random. ``space``
    (default ``DEFAULT_SPACE``) names a subset of ``lr``, ``r`` and ``dropout``; a key left out
    keeps the config's value. Each trial trains the config with its values and scores the
    monitored validation metric, or with ``folds`` the cross-validation mean (same folds for
    every trial). The test file is never read. After each trial, ``out/trials.json`` (every
    trial's values, score and validation metrics) and ``out/best.yaml`` (the config file with the
    best values, for ``ecomnlp train --config``) are rewritten atomically. Returns what
    trials.json holds.
    """
    import optuna

    from .cli import train_arguments

    if trials < 1:
        raise ValueError(f"trials must be at least 1, not {trials}")
    space = check_space(DEFAULT_SPACE if space is None else space)
    base = train_arguments(config)
    base["data"] = dataclasses.replace(base["data"], test=None)
    metric = monitored_metric(build_task(base["task"], base["task_options"]), base["trainer"]).removeprefix("val/")
    raw = yaml.safe_load(Path(config).read_text(encoding="utf-8"))

    def objective(trial: optuna.Trial) -> float:
        args = _with_values(base, {key: _suggest(trial, key, values) for key, values in space.items()})
        if folds:
            result = cross_validate(args, folds, seed)
            trial.set_user_attr("validation", result)
            return result["mean"]
        with tempfile.TemporaryDirectory(prefix="ecomnlp-trial-") as work:
            metrics = train(**{**args, "out": f"{work}/trial"})["metrics"]["valid"]
        trial.set_user_attr("validation", metrics)
        return _score(metrics, metric)

    record: dict[str, Any] = {}

    def save(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        best = study.best_trial
        record.update(config=str(config), metric=metric, folds=folds, seed=seed, space=space,
                      best={"number": best.number, "params": best.params, "score": best.value},
                      trials=[{"number": t.number, "params": t.params, "score": t.value, **t.user_attrs}
                              for t in study.trials])
        for key, value in best.params.items():
            section, field = FIELDS[key]
            raw[section] = {**(raw.get(section) or {}), field: value}
        write_json_atomic(Path(out) / "trials.json", record)
        write_text_atomic(Path(out) / "best.yaml", yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, trials // 2)))
    optuna.create_study(direction="maximize", sampler=sampler).optimize(objective, n_trials=trials, callbacks=[save])
    return record
