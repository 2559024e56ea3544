"""``ecomnlp <command>``: each command is a plain typed function; heavy imports stay inside.

YAML configs mirror the function signatures: ``ecomnlp train --config configs/x.yaml
--trainer.max_steps 100`` overrides one field of the file.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from .config import (CHAT_GENERATION, LLAMA_LORA, ChatDataConfig, DataConfig, GenerationSettings, LoraSettings,
                     RetrievalSettings, TaskSpec, TrainerSettings)
from .tasks.fraud_settings import FRAUD_TRAINER, Detector, FraudData, Mode, NetworkSettings, ThresholdSettings
from .tasks.ranking_settings import RECO_TRAINER, SEARCH_TRAINER, RecoData, RecoNetwork, SearchData, SearchNetwork


def models_command() -> None:
    """List the named base models and whether each is ready to load offline."""
    from .models import list_models

    for row in list_models():
        state = "ready" if row["ready"] else "not provisioned"
        print(f"{row['name']:<24} {row['kind']:<10} {state:<16} {row['description']}")


# Tasks with their own model and training command (not text -> label heads on the ``train`` path).
OWN_COMMAND_TASKS = {
    "support_chat": ("train-chat", "customer-support chatbot: causal LM + LoRA, grounded on a knowledge base"),
    "fraud_detection": ("train-fraud", "fraud / anomaly score of records (numeric, categorical, optional text)"),
    "recommendation": ("train-reco", "(user, item) interaction scores; recommend(user, k) over a catalogue"),
    "search_ranking": ("train-search", "(query, product) relevance; rank(query, k) over a catalogue"),
}


def tasks_command() -> None:
    """List the tasks: registered text tasks (``ecomnlp train``) and those with their own command."""
    from .task import task_class, task_names

    for name in task_names():
        doc = (task_class(name).__doc__ or "").strip().splitlines()[0]
        print(f"{name:<24} {'train':<13} {doc}")
    for name, (command, doc) in OWN_COMMAND_TASKS.items():
        print(f"{name:<24} {command:<13} {doc}")


def train_command(
    task: str,
    data: DataConfig,
    out: str,
    model: str = "minilm-l6",
    task_options: dict[str, Any] | None = None,
    pooling: Literal["mean", "cls"] = "mean",
    lora: LoraSettings = LoraSettings(),
    trainer: TrainerSettings = TrainerSettings(),
    lexical: bool = False,
    base_dropout: float | None = None,
) -> None:
    """Train one task's LoRA adapter + head on a frozen base model; save the task directory ``out``.

    Args:
        task: registered task name (see ``ecomnlp tasks``).
        data: files, column mapping and batching.
        out: task directory to write (adapter, head, card).
        model: base model name (see ``ecomnlp models``) or a local Hugging Face directory.
        task_options: the task's own options, e.g. ``{mode: stars}`` or ``{multi_label: true}``.
        pooling: how token vectors become one vector.
        lora: adapter hyper-parameters.
        trainer: optimisation and Lightning settings.
        lexical: single-label classifiers: blend in a TF-IDF + logistic-regression part fitted on the
            training rows, its weight chosen on validation (see ``ecomnlp add-lexical``).
        base_dropout: the frozen base's own dropout while training; null keeps the pretrained config's, 0 turns
            it off (on CPU its random masks cost about a third of a step).
    """
    from .training import train as run

    summary = run(task, data, out, model, task_options, pooling, lora, trainer, lexical=lexical,
                  base_dropout=base_dropout)
    if "metrics" in summary:  # only the process that saved (rank 0) reports
        print(json.dumps(summary, indent=2, ensure_ascii=False))


def train_multitask_command(
    tasks: dict[str, TaskSpec],
    model: str,
    out: str,
    adapters: Literal["per_task", "shared"] = "per_task",
    sampler: Literal["proportional", "temperature", "uniform"] = "proportional",
    temperature: float = 2.0,
    pooling: Literal["mean", "cls"] = "mean",
    lora: LoraSettings = LoraSettings(),
    trainer: TrainerSettings = TrainerSettings(),
    steps_per_epoch: int | None = None,
) -> None:
    """Train several tasks jointly on one frozen base model; save one task directory per task, ``<out>/<name>``.

    Args:
        tasks: name -> {task, data, task_options}; the name is the task's directory under ``out``.
        model: base model name (see ``ecomnlp models``) or a local Hugging Face directory.
        out: folder of the task directories.
        adapters: one LoRA adapter per task, or one shared by all (each directory gets a copy).
        sampler: which task's batch comes next: proportional to its training rows, temperature
            (p ∝ n^(1/temperature)), or uniform.
        temperature: the temperature sampler's T.
        pooling: how token vectors become one vector.
        lora: adapter hyper-parameters.
        trainer: optimisation and Lightning settings; early stopping follows val/mean by default.
        steps_per_epoch: steps per epoch; default every task's batches once.
    """
    from .multitask import train_multitask

    summary = train_multitask(tasks, model, out, adapters, sampler, temperature, pooling, lora, trainer,
                              steps_per_epoch)
    if "metrics" in summary:  # only the process that saved (rank 0) reports
        print(json.dumps(summary, indent=2, ensure_ascii=False))


def train_chat_command(
    data: ChatDataConfig,
    out: str,
    model: str = "smollm2-135m-instruct",
    encoder: str = "e5-small-multilingual",
    store: str = "our store",
    lora: LoraSettings = LLAMA_LORA,
    trainer: TrainerSettings = TrainerSettings(lr=2e-4, max_epochs=3),
    retrieval: RetrievalSettings = RetrievalSettings(),
    generation: GenerationSettings = CHAT_GENERATION,
) -> None:
    """Fine-tune a support chatbot's LoRA adapter on dialogues grounded on a knowledge base; save ``out``.

    Args:
        data: dialogues, knowledge base, held-out questions (for the hand-off threshold), batching.
        out: chat directory to write (adapter, card, knowledge base copy).
        model: causal LM name (see ``ecomnlp models``) or a local Hugging Face directory.
        encoder: the shared encoder that retrieves knowledge-base passages.
        store: the store's name in the assistant's instructions.
        lora: adapter hyper-parameters.
        trainer: optimisation and Lightning settings; the best checkpoint has the lowest validation perplexity.
        retrieval: the encoder's retrieval adapter (contrastive, on the training questions; 0 epochs: none).
        generation: how the trained bot decodes its replies by default (saved in its card), e.g. num_beams.
    """
    from .chat_training import train_chat

    summary = train_chat(data, out, model, encoder, store, lora, trainer, retrieval, generation)
    if "perplexity" in summary:
        print(json.dumps(summary, indent=2, ensure_ascii=False))


def chat_command(model: str, kb: str | None = None, max_new_tokens: int | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, num_beams: int | None = None, log: str | None = None) -> None:
    """Talk to a trained support chatbot in the terminal; replies stream as they are generated (with beam search,
    each reply shows when its search ends).

    Args:
        model: chat directory from ``ecomnlp train-chat``.
        kb: knowledge base (JSONL or Markdown file, or a folder) to use instead of the one saved with it.
        max_new_tokens: longest reply, in tokens; default: as the bot was trained to decode.
        temperature: 0 for deterministic greedy replies; above 0 samples (with top_p).
        top_p: nucleus sampling mass.
        num_beams: beams of a deterministic beam search (1: greedy); default: as the bot was trained to decode,
            or 1 when temperature is above 0.
        log: JSONL transcript to append to, with order numbers, e-mails and phone numbers masked.
    """
    from .chatbot import load_chatbot
    from .pii import mask_pii

    bot = load_chatbot(model, kb)
    beams = num_beams if num_beams is not None else 1 if temperature > 0 else bot.settings.num_beams
    longest = max_new_tokens if max_new_tokens is not None else bot.settings.max_new_tokens
    messages: list[dict[str, str]] = []
    print("Type your question; an empty line or Ctrl-D ends the chat.")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        messages.append({"role": "user", "content": text})
        grounding = bot.ground(messages)
        print("bot> ", end="", flush=True)
        pieces = []
        for piece in bot.stream(messages, grounding, max_new_tokens=longest, temperature=temperature,
                                top_p=top_p, num_beams=beams):
            pieces.append(piece)
            print(piece, end="", flush=True)
        reply = "".join(pieces).strip()
        print(f"\n     [{'handed off' if grounding.handoff else 'sources: ' + ', '.join(grounding.sources)}]")
        messages.append({"role": "assistant", "content": reply})
        if log:
            with open(log, "a", encoding="utf-8") as f:
                for m in messages[-2:]:
                    f.write(json.dumps({"role": m["role"], "content": mask_pii(m["content"])}, ensure_ascii=False) + "\n")


def finetune_command(
    source: str,
    data: str,
    out: str,
    examples: int | None = None,
    test: str | None = None,
    old_test: str | None = None,
    columns: dict[str, str] | None = None,
    trainer: TrainerSettings = TrainerSettings(),
) -> None:
    """Fine-tune a trained task on a new domain's labelled file; save it as a new task directory.

    Prints the task's metrics before and after, on the new domain's held-out rows and (with
    ``old_test``) on the old domain's test file, to show what was gained and what was forgotten.

    Args:
        source: trained task directory to start from (also accepted as ``--from``); it is not changed.
        data: the new domain's labelled file.
        out: new task directory to write.
        examples: train on this many rows of ``data`` (seeded random); the others are held out.
        test: the new domain's held-out file, instead of the rows not trained on.
        old_test: the old domain's test file, to measure forgetting.
        columns: task field -> file column; defaults to the source's mapping.
        trainer: optimisation and Lightning settings.
    """
    from .training import finetune

    config = DataConfig(train=data, test=test, columns=columns or {})
    summary = finetune(source, config, out, examples, old_test, trainer)
    if "metrics" in summary:
        print(json.dumps(summary, indent=2, ensure_ascii=False))


def add_lexical_command(source: str, data: DataConfig, out: str) -> None:
    """Add a lexical part to a trained single-label classifier; save it as a new task directory.

    A TF-IDF + logistic-regression model is fitted on ``data.train`` and blended with the encoder's
    probabilities, its weight chosen on ``data.valid``; prints validation (and test) metrics of the blend,
    the encoder alone and the lexical model alone.

    Args:
        source: trained task directory (also accepted as ``--from``); it is not changed.
        data: the training, validation (and test) files; columns default to the source's mapping.
        out: new task directory to write.

    The rows ``data.max_train_examples`` keeps and the validation share of train are those training used (its seed).
    """
    from .training import add_lexical

    print(json.dumps(add_lexical(source, data, out), indent=2, ensure_ascii=False))


def merge_command(models: list[str], weights: list[float], out: str, combination: str = "cat") -> None:
    """Merge trained adapters of one task (e.g. two domains) with weights into a new task directory.

    Args:
        models: trained task directories of the same task, labels and base model.
        weights: one weight per directory.
        out: new task directory.
        combination: peft combination type: cat (exact weighted sum of the LoRA updates), linear, svd, ties, ...
    """
    from .compose import merge

    print(f"merged adapter saved in {merge(models, weights, out, combination)}")


def ensemble_command(models: list[str], data: DataConfig, out: str, lexical: bool = False) -> None:
    """Average trained adapters of one task (e.g. one config trained with different seeds) into one task
    directory; ``ecomnlp.load`` of it predicts with every member (one encoder pass each).

    Prints validation (and test) metrics of the ensemble beside each member's alone.

    Args:
        models: trained task directories of the same task, labels, max length and base model.
        data: the training, validation (and test) files; columns default to the first member's mapping.
        out: new task directory to write; the members are not changed.
        lexical: blend in a lexical part fitted on ``data.train``, its weight chosen on ``data.valid``.

    Without ``data.valid``, the members must have been trained with one seed (the same validation share of train).
    """
    from .ensemble import build_ensemble

    print(json.dumps(build_ensemble(models, data, out, lexical), indent=2, ensure_ascii=False))


def evaluate_command(model: str | None = None, data: str | None = None, out: str | None = None,
                     columns: dict[str, str] | None = None, on_bad_row: Literal["skip", "fail"] = "skip",
                     batch_size: int = 64, suite: str | None = None) -> None:
    """Evaluate a trained task on a labelled file, or every task of a suite in one report.

    Args:
        model: trained task directory.
        data: labelled CSV / JSONL / Parquet file or saved dataset.
        out: report folder (metrics.json and figures).
        columns: task field -> file column; defaults to the mapping used in training.
        on_bad_row: skip rows with empty text or label (counted in the log), or fail.
        batch_size: rows per forward pass.
        suite: a suite YAML (tasks of any kind: text classification, fraud, recommendation, chat; their
            test data; baseline); writes report.md, report.json, index.html.
    """
    if suite:
        from .report import evaluate_suite, table_rows

        report = evaluate_suite(suite)
        for entry in report["tasks"]:
            print(f"{entry['name']}:", ", ".join(f"{k} {a} (baseline {b})" for k, a, b in table_rows(entry)))
        print(f"report: {Path(report['out']) / 'index.html'}")
        return
    if not (model and data and out):
        raise ValueError("give --model, --data and --out, or --suite")
    from .evaluation import evaluate as run

    report = run(model, data, out, columns, on_bad_row, batch_size)
    shown = {k: v for k, v in report.items() if not isinstance(v, (dict, list))}
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    print(f"report: {out}/metrics.json")


def _dict_parameters(command: Callable[..., None]) -> set[str]:
    """Names of ``command``'s parameters typed as a dict (``dict[...]``, optionally ``| None``)."""
    import types
    import typing

    def is_dict(hint: Any) -> bool:
        origin = typing.get_origin(hint)
        return hint is dict or origin is dict or (origin in (typing.Union, types.UnionType)
                                                  and any(is_dict(a) for a in typing.get_args(hint)))

    return {name for name, hint in typing.get_type_hints(command).items() if name != "return" and is_dict(hint)}


def merge_dict_overrides(command: Callable[..., None], args: Sequence[str]) -> list[str]:
    """``args`` with each override inside a dict parameter (``--features.numeric.V2 '{}'``) rewritten as the whole
    dict with that key set, so the dict's other keys stay. jsonargparse alone sets ``features["numeric"] =
    {"V2": {}}``, silently dropping every other numeric column. The dict starts from the ``--config`` file's value
    (empty without one); a whole-dict override (``--features '{...}'``) replaces it for the overrides after it."""
    import copy

    import yaml

    names, config, current, out = _dict_parameters(command), {}, {}, []
    i = 0
    while i < len(args):
        flag, equals, value = args[i].partition("=")
        if not equals:  # "--key value" rather than "--key=value"
            value = args[i + 1] if i + 1 < len(args) else None
        path = flag[2:].split(".") if flag.startswith("--") else []
        if flag == "--config" and value is not None:
            config = yaml.safe_load(Path(value).read_text(encoding="utf-8")) or {}
        if value is None or not path or path[0] not in names:
            out.append(args[i])
            i += 1
            continue
        if len(path) == 1:
            current[path[0]] = yaml.safe_load(value)
            out += [flag, value]
        else:
            start = current[path[0]] if path[0] in current else copy.deepcopy(config.get(path[0]))
            node = root = start or {}
            for key in path[1:-1]:
                node[key] = node[key] if isinstance(node.get(key), dict) else {}
                node = node[key]
            node[path[-1]] = yaml.safe_load(value)
            current[path[0]] = root
            out += [f"--{path[0]}", json.dumps(root)]
        i += 1 if equals else 2
    return out


def command_arguments(command: Callable[..., None], config: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Keyword arguments for ``command`` from a YAML config plus ``--key value`` overrides (``merge_dict_overrides``
    keeps a dict parameter's other keys when one of them is overridden)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(command)
    parsed = parser.parse_args(merge_dict_overrides(command, ["--config", config, *overrides] if config
                                                    else list(overrides)))
    parsed = parser.instantiate_classes(parsed)
    return {k: v for k, v in vars(parsed).items() if k != "config"}


def train_arguments(config: str, overrides: list[str] = ()) -> dict[str, Any]:
    """Keyword arguments for ``ecomnlp.train`` from a YAML config plus ``--key value`` overrides."""
    return command_arguments(train_command, config, overrides)


def multitask_arguments(config: str, overrides: list[str] = ()) -> dict[str, Any]:
    """Keyword arguments for ``train_multitask`` from a YAML config plus ``--key value`` overrides."""
    return command_arguments(train_multitask_command, config, overrides)


def cv_command(train_config: str, folds: int = 5, seed: int = 42) -> None:
    """Cross-validate a train config on its training rows; prints each fold's validation metrics, their mean and std.

    The folds are stratified by label for single-label classification; the config's valid and
    test files are not read.

    Args:
        train_config: a train config (YAML), as for ``ecomnlp train --config``; also given as ``--config``.
        folds: number of folds.
        seed: seed of the fold assignment (training itself uses trainer.seed).
    """
    from .tuning import cross_validate

    print(json.dumps(cross_validate(train_arguments(train_config), folds, seed), indent=2, ensure_ascii=False))


def tune_command(train_config: str, out: str, trials: int = 10, folds: int | None = None,
                 space: dict[str, list[float]] | None = None, seed: int = 42) -> None:
    """Search learning rate, LoRA rank and LoRA dropout for a train config (Optuna TPE, seeded).

    Writes ``<out>/best.yaml`` (the config with the best values, for ``ecomnlp train --config``)
    and ``<out>/trials.json`` (every trial's values and score). The test file is never read.

    Args:
        train_config: a train config (YAML), as for ``ecomnlp train --config``; also given as ``--config``.
        out: folder for best.yaml and trials.json.
        trials: number of trainings (times folds with --folds).
        folds: score each trial by the mean of k-fold cross-validation on the training rows,
            instead of by the validation split.
        space: e.g. ``'{lr: [1.0e-4, 3.0e-3], r: [4, 8, 16], dropout: [0.0, 0.2]}'``: lr and dropout
            ranges (lr log-uniform), r choices; a key left out keeps the config's value.
        seed: seed of the sampler and of the folds (training itself uses trainer.seed).
    """
    from .tuning import search

    result = search(train_config, out, trials, space, folds, seed)
    print(json.dumps(result["best"], indent=2))
    print(f"best config: {Path(out) / 'best.yaml'}")


def predict_command(model: str, text: list[str]) -> None:
    """Predict with a trained task directory; prints one JSON line per text.

    Args:
        model: trained task directory.
        text: one or more texts, e.g. ``--text '["great tea", "arrived broken"]'``.
    """
    from .predictor import load

    for row in load(model).predict(text):
        print(json.dumps(row, ensure_ascii=False))


def serve_command(models: list[str] | dict[str, str], host: str = "127.0.0.1", port: int = 8000,
                  base: str | None = None, device: str = "cpu") -> None:
    """Serve trained directories over HTTP for real-time calls (FastAPI + uvicorn, ``ecomnlp.serving``).

    Routes: POST /predict/NAME (classifiers), /score/NAME (fraud), /recommend/NAME, /rank/NAME (search),
    /chat/NAME; GET /models, /health, /docs.

    Args:
        models: trained directories, named by folder (``'[runs/sentiment, runs/fraud]'``) or as a mapping
            (``'{sentiment: runs/sentiment-zh}'``); the classifiers share one base model in memory.
        host: address to listen on (0.0.0.0 for every interface).
        port: TCP port.
        base: base model name or folder for the encoder tasks; default: each task's own.
        device: cpu, cuda, ...
    """
    from .serving import serve

    serve(models, host, port, base, device)


def cluster_command(data: str, text: str, out: str, model: str | None = None, base: str | None = None,
                    k: int | Literal["auto"] = "auto", max_k: int = 20, batch_size: int = 64, seed: int = 0) -> None:
    """Cluster the texts of one column (e.g. product titles); write clusters.csv, clusters.json and map.png.

    Args:
        data: CSV / TSV / JSONL / Parquet file or saved dataset.
        text: the column to cluster.
        out: report folder.
        model: a trained task directory, to embed through its adapter; default: the base model alone.
        base: base model name or folder; default: the task's own base, or minilm-l6 without --model.
        k: the number of clusters, or auto (the best silhouette over 2..max_k).
        max_k: the largest k that auto tries.
        batch_size: texts per forward pass.
        seed: k-means seed.
    """
    from .clustering import cluster, read_texts

    texts, rows = read_texts(data, text)
    result = cluster(texts, k, model, base, max_k=max_k, batch_size=batch_size, seed=seed)
    result.save(out, rows)
    print(f"{len(texts)} texts, k={result.k}, silhouette {result.silhouette:.3f}")
    for c in result.clusters:
        print(f"{c['cluster']:>3} {c['size']:>7}  {', '.join(c['terms'][:6])}")
    print(f"report: {out}/clusters.json")


def train_fraud_command(
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
) -> None:
    """Train a fraud / anomaly detection task on records with numeric, categorical and text fields; save ``out``.

    Args:
        data: files, label and time columns, how validation and test rows are split off, batching.
        features: a FeaturePipeline spec: numeric, categorical, crosses, templates (the text fields).
        out: task directory to write (card with threshold and calibration, features.json, model.safetensors).
        mode: supervised, semi_supervised (few labels) or unsupervised (labels unused).
        detector: classifier (supervised), autoencoder, deep_svdd or ecod; default by mode.
        model: base encoder for the text fields; not loaded when there are none.
        network: the scorer's widths, embeddings, loss and class weights.
        threshold: the alert rule chosen on validation: precision, alerts_per_day or alert_rate, and its target.
        lora: the text adapter's hyper-parameters.
        trainer: optimisation and Lightning settings; early stopping on validation AUPRC when it has labels.
        pooling: how token vectors become one text vector.
    """
    from .tasks.fraud_detection import train_fraud

    summary = train_fraud(data, features, out, mode, detector, model, network, threshold, lora, trainer, pooling)
    print(json.dumps(summary, indent=2, ensure_ascii=False))


def train_reco_command(
    data: RecoData,
    out: str,
    features: dict[str, Any] | None = None,
    model: str = "minilm-l6",
    network: RecoNetwork = RecoNetwork(),
    lora: LoraSettings = LoraSettings(),
    trainer: TrainerSettings = RECO_TRAINER,
    pooling: Literal["mean", "cls"] = "mean",
    k: int = 10,
) -> None:
    """Train a recommender on user-item interactions (plus optional user and item files); save ``out``.

    Args:
        data: interactions, users and items files, column mapping, per-user splits, item cold start, batching.
        out: task directory to write (card with metrics, feature pipelines, towers, cached item vectors, users).
        features: {users: <FeaturePipeline spec>, items: <spec>}; the items' templates are their text.
        model: the shared encoder for the item texts; not loaded without templates.
        network: towers, history, scorer (dot, mlp, linear), loss (softmax, bce, bpr), negatives.
        lora: the text adapter's hyper-parameters (network.text: adapter).
        trainer: optimisation and Lightning settings; early stopping on validation nDCG@k when there is validation.
        pooling: how token vectors become one text vector.
        k: the cut-off of the ranking metrics.
    """
    from .tasks.recommendation import train_recommendation

    summary = train_recommendation(data, out, features, model, network, lora, trainer, pooling, k)
    print(json.dumps(summary, indent=2, ensure_ascii=False))


def train_search_command(
    data: SearchData,
    out: str,
    features: dict[str, Any] | None = None,
    model: str = "minilm-l6",
    network: SearchNetwork = SearchNetwork(),
    lora: LoraSettings = LoraSettings(),
    trainer: TrainerSettings = SEARCH_TRAINER,
    pooling: Literal["mean", "cls"] = "mean",
    k: int = 10,
) -> None:
    """Train a search ranker on (query, product, relevance) judgments over a product catalogue; save ``out``.

    Args:
        data: judgments and catalogue files, column mapping, relevance gains, query splits, batching.
        out: task directory to write (card with metrics, item pipeline, towers, cached product vectors).
        features: the products' FeaturePipeline spec; its templates are the product text.
        model: the shared encoder for queries and product texts.
        network: towers, scorer (dot, mlp, linear), loss (bce pointwise, bpr pairwise, softmax), negatives.
        lora: the task's adapter hyper-parameters (network.text: adapter).
        trainer: optimisation and Lightning settings; early stopping on validation nDCG@k.
        pooling: how token vectors become one text vector.
        k: the cut-off of the ranking metrics.
    """
    from .tasks.search_ranking import train_search

    summary = train_search(data, out, features, model, network, lora, trainer, pooling, k)
    print(json.dumps(summary, indent=2, ensure_ascii=False))


# Named *_command so that jsonargparse, resolving import paths, never touches the lazy
# `ecomnlp.train` / `ecomnlp.evaluate` attributes (which would import torch).
COMMANDS = {"models": models_command, "tasks": tasks_command, "train": train_command,
            "train-multitask": train_multitask_command, "train-chat": train_chat_command,
            "train-fraud": train_fraud_command, "train-reco": train_reco_command,
            "train-search": train_search_command, "chat": chat_command,
            "finetune": finetune_command, "add-lexical": add_lexical_command, "merge": merge_command,
            "ensemble": ensemble_command,
            "evaluate": evaluate_command, "predict": predict_command, "serve": serve_command, "cluster": cluster_command,
            "cv": cv_command, "tune": tune_command}


# Flags given under another name: `from` is a Python keyword, and jsonargparse keeps `config`
# for a file of the command's own arguments, while cv and tune read a train config.
_FLAGS = {"finetune": ("--from", "--source"), "add-lexical": ("--from", "--source"), "cv": ("--config", "--train_config"),
          "tune": ("--config", "--train_config")}


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import auto_cli

    args = sys.argv[1:] if argv is None else argv
    if args[:1] and args[0] in _FLAGS:
        flag, name = _FLAGS[args[0]]
        args = [name + a[len(flag):] if a == flag or a.startswith(flag + "=") else a for a in args]
    if args[:1] and args[0] in COMMANDS:
        args = [args[0], *merge_dict_overrides(COMMANDS[args[0]], args[1:])]
    auto_cli(COMMANDS, args=args, as_positional=False)


if __name__ == "__main__":
    main()
