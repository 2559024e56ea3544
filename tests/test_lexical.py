"""The lexical part of a classifier: TF-IDF + LR fitted on train, blended by a weight chosen on validation,
saved without pickle, reloaded to the same outputs; added to a trained task, kept through fine-tuning."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import NEGATIVE, POSITIVE, import_script, quick_train, write_csv
from ecomnlp.lexical import (LEXICAL_FILES, check_blendable, choose_weight, fit_lexical, load_lexical, mix,
                             save_lexical)

# Each class has its own words; "plain" texts carry none of them.
WORDS = {0: "kettle boiler heater", 1: "shampoo conditioner soap", 2: "novel chapter author"}
TEXTS = [f"{WORDS[i % 3].split()[i // 3 % 3]} item {i}" for i in range(30)]
TARGETS = [i % 3 for i in range(30)]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_lexical_model_learns_class_words_and_reloads_to_the_same_outputs(tmp_path: Path) -> None:
    lexical = fit_lexical(TEXTS, TARGETS, num_classes=4)  # class 3 never occurs in training
    probe = ["a boiler for sale", "the shampoo", "author signed it", "nothing known", "好"]
    log_probs = lexical.log_probs(probe)
    assert log_probs.shape == (5, 4)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(5))
    assert log_probs[:3].argmax(-1).tolist() == [0, 1, 2]
    assert log_probs[:, 3].exp().max() < 1e-6  # the absent class gets no probability
    lexical.weight = 0.35
    save_lexical(lexical, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(LEXICAL_FILES)
    assert b"pickle" not in (tmp_path / "lexical.json").read_bytes()
    loaded = load_lexical(tmp_path)
    assert loaded.weight == 0.35
    assert torch.equal(loaded.log_probs(probe), log_probs)


def test_binary_lexical_model_matches_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression

    texts = POSITIVE + NEGATIVE
    targets = [1] * len(POSITIVE) + [0] * len(NEGATIVE)
    lexical = fit_lexical(texts, targets, num_classes=2)
    features = lexical.vectorizer.transform(texts)
    expected = LogisticRegression(C=10.0, max_iter=2000).fit(features, targets).predict_proba(features)
    assert np.allclose(lexical.log_probs(texts).exp().numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("encoder_wrong, lexical_right, expected", [
    ((), range(10), 0.0),                 # the encoder is right everywhere: the smallest of the tied weights
    (range(6, 10), range(4, 10), 0.3),    # blend right everywhere for 0.29 < w < 0.91: the smallest grid point
    (range(2, 10), range(10), 0.8),       # a very sure wrong encoder: the lexical model must outweigh it
])
def test_blend_weight_is_the_smallest_validation_optimum(encoder_wrong, lexical_right, expected) -> None:
    """The encoder is sure where right (margin 2) and unsure where wrong (margin 1.2) except in the last case
    (margin 10); the lexical model is sure where right (margin 3), unsure where wrong (margin 0.2)."""
    from ecomnlp.lexical import WEIGHT_GRID

    targets = torch.zeros(10, dtype=torch.long)
    wrong_margin = 10.0 if expected == 0.8 else 1.2
    encoder = torch.tensor([[0.0, wrong_margin] if i in encoder_wrong else [2.0, 0.0] for i in range(10)])
    lexical = torch.log_softmax(torch.tensor([[3.0, 0.0] if i in lexical_right else [0.0, 0.2] for i in range(10)]), -1)
    weight = choose_weight(encoder, lexical, targets)
    assert weight == expected
    correct = {w: (mix(encoder, lexical, w).argmax(-1) == targets).sum().item() for w in WEIGHT_GRID}
    assert correct[weight] == max(correct.values()) == 10
    assert all(correct[w] < 10 for w in WEIGHT_GRID if w < weight)


def test_a_multi_label_task_cannot_take_a_lexical_part() -> None:
    from ecomnlp.task import build_task

    task = build_task("product_classification", {"multi_label": True})
    task.fit(["a|b", "b"])
    with pytest.raises(ValueError, match="single-label classification task"):
        check_blendable(task)


@pytest.fixture(scope="module")
def blended(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path, sentiment_csv: Path) -> dict:
    out = tmp_path_factory.mktemp("lexical") / "category"
    summary = quick_train("product_classification", sentiment_csv, out, tiny_encoder,
                          columns={"text": "review", "label": "cat"}, epochs=1, lexical=True)
    return {"out": out, "summary": summary}


def test_train_with_a_lexical_part_saves_it_and_the_loaded_model_blends(blended: dict, sentiment_csv: Path) -> None:
    import ecomnlp
    from ecomnlp.data import load_rows
    from ecomnlp.training import _split_off

    out = blended["out"]
    assert set(LEXICAL_FILES) <= {p.name for p in out.iterdir()}
    card = json.loads((out / "card.json").read_text())
    assert card["lexical"]["weight"] in [i / 20 for i in range(21)]
    assert blended["summary"]["lexical_weight"] == card["lexical"]["weight"]
    valid_metrics = card["metrics"]["valid"]
    assert {"encoder", "lexical", "accuracy"} <= set(valid_metrics)
    # the blend is never worse than the encoder alone on the rows its weight was chosen on
    assert valid_metrics["accuracy"] >= valid_metrics["encoder"]["accuracy"]
    model = ecomnlp.load(out)
    assert model.lexical is not None and model.lexical.weight == card["lexical"]["weight"]
    rows = load_rows(sentiment_csv, model.task, card["columns"])
    _, valid = _split_off(rows, 0.1, card["training"]["seed"])
    texts = valid.texts[0]
    blend = model.logits(texts)
    lexical, model.lexical = model.lexical, None
    encoder = model.logits(texts)
    assert torch.allclose(blend, mix(encoder, lexical.log_probs(texts), lexical.weight), atol=1e-6)
    targets = torch.tensor([model.task.encode_target(v) for v in valid.labels])
    assert (blend.argmax(-1) == targets).float().mean().item() == pytest.approx(valid_metrics["accuracy"])
    assert (encoder.argmax(-1) == targets).float().mean().item() == pytest.approx(valid_metrics["encoder"]["accuracy"])


def test_add_lexical_writes_a_new_directory_on_the_same_encoder(tmp_path: Path, tiny_encoder: Path,
                                                                sentiment_csv: Path) -> None:
    from ecomnlp.cli import main

    source = tmp_path / "sentiment"
    quick_train("review_sentiment", sentiment_csv, source, tiny_encoder, columns={"text": "review"}, epochs=1)
    before = _digest(source)
    out = tmp_path / "sentiment-lexical"
    main(["add-lexical", "--from", str(source), "--data.train", str(sentiment_csv), "--out", str(out)])
    assert _digest(source) == before
    after = _digest(out)
    for name in ("adapter_model.safetensors", "head.safetensors"):
        assert after[name] == before[name]
    card, source_card = (json.loads((d / "card.json").read_text()) for d in (out, source))
    assert card["lexical_added_to"]["path"] == str(source)
    assert card["lexical"]["train_examples"] + card["metrics"]["valid"]["examples"] == 48
    # the same held-out rows as training used: the encoder's own figures are the source's
    source_valid = {k: v for k, v in source_card["metrics"]["valid"].items() if k != "examples"}
    assert card["metrics"]["valid"]["encoder"] == pytest.approx(source_valid, abs=1e-6)


def test_add_lexical_refuses_a_multi_label_task(tmp_path: Path, tiny_encoder: Path) -> None:
    from ecomnlp.config import DataConfig
    from ecomnlp.training import add_lexical

    rows = [(t, "pos|en" if t.isascii() else "pos") for t in POSITIVE] * 3 + [(t, "neg") for t in NEGATIVE] * 3
    train = write_csv(tmp_path / "multi.csv", ["review", "tags"], rows)
    source = tmp_path / "tags"
    quick_train("product_classification", train, source, tiny_encoder, columns={"text": "review", "label": "tags"},
                task_options={"multi_label": True}, epochs=1)
    with pytest.raises(ValueError, match="single-label"):
        add_lexical(str(source), DataConfig(train=str(train)), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_finetune_refits_the_lexical_part_on_the_new_rows(blended: dict, tmp_path: Path) -> None:
    from ecomnlp.config import DataConfig, TrainerSettings
    from ecomnlp.lexical import load_lexical as load
    from ecomnlp.training import finetune

    rows = [(f"{t} xyzzy", "english" if t.isascii() else "中文") for t in POSITIVE + NEGATIVE] * 4
    new = write_csv(tmp_path / "new.csv", ["review", "cat"], rows)
    out = tmp_path / "new-domain"
    finetune(str(blended["out"]), DataConfig(train=str(new)), str(out), examples=30,
             trainer=TrainerSettings(max_epochs=1, progress_bar=False, accelerator="cpu", devices=1))
    old, refit = load(blended["out"]), load(out)
    assert "xyzzy" in refit.vectorizer.vocabulary_ and "xyzzy" not in old.vectorizer.vocabulary_
    card = json.loads((out / "card.json").read_text())
    assert card["lexical"]["weight"] == refit.weight
    assert {"encoder", "lexical"} <= set(card["metrics"]["after"]["new_domain"])


def test_bench_quality_table_keeps_the_encoder_and_the_blend_apart() -> None:
    """The 'ours' column is the encoder alone even when training fitted a lexical part; the blend has its own."""
    bench = import_script("bench_quality")
    baseline = {"accuracy": 0.9, "train_examples": 10}
    ours = {"metrics": {"test": {"accuracy": 0.92, "examples": 5}}, "train_examples": 10, "train_rows_available": 10,
            "steps": 3, "max_length": 64, "wall_time_s": 60}
    plain = {"case": "plain", "model": "m", "goal": 0.95, "ours": ours, "tfidf_same_rows": baseline,
             "tfidf_full_train": baseline}
    added = {**plain, "case": "added", "lexical": {"metrics": {"test": {"accuracy": 0.96}}, "lexical": {"weight": 0.45}}}
    trained = {**plain, "case": "trained", "ours": {**ours, "lexical_weight": 0.3, "metrics": {"test": {
        "accuracy": 0.94, "examples": 5, "encoder": {"accuracy": 0.91}}}}}
    rows = {line.split(" ")[1]: line for line in bench.table([plain, added, trained]).splitlines()[2:]}
    assert "**92.00%**" in rows["plain"] and "| — |" in rows["plain"] and "95.0% (not met)" in rows["plain"]
    assert "**92.00%**" in rows["added"] and "96.00% (w=0.45; met)" in rows["added"]
    assert "**91.00%**" in rows["trained"] and "94.00% (w=0.30; not met)" in rows["trained"]


def test_explain_sees_the_blend(blended: dict) -> None:
    """With a lexical part, explain's label and probability are predict's, and cutting a word changes both parts."""
    import ecomnlp

    model = ecomnlp.load(blended["out"])
    texts = ["great coffee", "质量很好，推荐", "terrible taste"]
    for explained, predicted in zip(model.explain(texts, top_k=None), model.predict(texts)):
        assert explained["label"] == predicted["label"]
        assert explained["probability"] == pytest.approx(predicted["probability"], abs=1e-5)
