"""Explanations: a word's weight is the exact drop in the predicted label's probability without it."""
from __future__ import annotations

from pathlib import Path

import pytest

import ecomnlp
from conftest import quick_train
from ecomnlp.predictor import TaskModel

ENGLISH, CHINESE = "great coffee, fast shipping", "书的内容很好"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path, sentiment_csv: Path) -> TaskModel:
    out = tmp_path_factory.mktemp("explain") / "sentiment"
    quick_train("review_sentiment", sentiment_csv, out, tiny_encoder, columns={"text": "review"})
    return ecomnlp.load(out)


@pytest.mark.parametrize("text, words", [(ENGLISH, ["great", "coffee", ",", "fast", "shipping"]),
                                         (CHINESE, list(CHINESE))])
def test_weights_are_probability_drops_of_each_word(model: TaskModel, text: str, words: list[str]) -> None:
    [explained] = model.explain(text, top_k=None)
    [full] = model.predict(text)
    assert explained["label"] == full["label"]
    assert explained["probability"] == pytest.approx(full["probability"], abs=1e-6)
    assert sorted(t["token"] for t in explained["tokens"]) == sorted(words)  # Chinese: one character each
    for token in explained["tokens"]:  # by hand: delete the word from the text and predict again
        assert text.count(token["token"]) == 1
        [without] = model.predict(text.replace(token["token"], "", 1))
        drop = full["probability"] - without["probabilities"][full["label"]]
        assert token["weight"] == pytest.approx(drop, abs=1e-6)
    weights = [t["weight"] for t in explained["tokens"]]
    assert weights == sorted(weights, reverse=True) and any(w != 0 for w in weights)


def test_top_k_word_pieces_and_truncation(model: TaskModel) -> None:
    text = "completely new tea"
    assert len(model.backbone.tokenizer.tokenize("completely")) > 1  # several word pieces...
    everything = model.explain(text, top_k=None)[0]["tokens"]
    assert sorted(t["token"] for t in everything) == sorted(text.split())  # ...shown as one word
    assert model.explain(text, top_k=2)[0]["tokens"] == everything[:2]
    assert model.explain(text)[0]["tokens"] == everything  # top_k=5, fewer words
    # only what the model reads: the card's max_length, less [CLS] and [SEP]
    assert len(model.explain("great coffee " * 40, top_k=None)[0]["tokens"]) == model.max_length - 2


def test_batches_of_mixed_texts_match_one_by_one(model: TaskModel) -> None:
    texts = [ENGLISH, CHINESE, "", "the blender broke, refund took too long"]
    together = model.explain(texts, top_k=3, batch_size=4)
    assert len(together) == 4
    for text, explained in zip(texts, together):
        [alone] = model.explain(text, top_k=3)
        assert explained["label"] == alone["label"]
        assert explained["probability"] == pytest.approx(alone["probability"], abs=1e-6)
        assert [t["token"] for t in explained["tokens"]] == [t["token"] for t in alone["tokens"]]
        assert [t["weight"] for t in explained["tokens"]] == pytest.approx([t["weight"] for t in alone["tokens"]],
                                                                           abs=1e-6)
    assert together[2]["tokens"] == [] and together[2]["label"] == model.predict("")[0]["label"]
    assert model.explain([]) == []


def test_sentencepiece_words_absorb_the_bare_word_start_piece() -> None:
    """XLM-R style tokenizers (e5) write a word start as a lone "▁" piece before Chinese characters."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import PreTrainedTokenizerFast

    from ecomnlp.explain import _words
    from ecomnlp.models.tiny import SAMPLE_TEXTS

    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(SAMPLE_TEXTS * 2, vocab_size=120, special_tokens=["<pad>", "<unk>"], unk_token="<unk>")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=unigram, unk_token="<unk>", pad_token="<pad>")
    text = "书的内容 unbelievably stale, 很好"
    encoding = tokenizer([text], return_offsets_mapping=True)
    assert tokenizer.convert_ids_to_tokens(encoding["input_ids"][0]).count("▁") >= 2
    shown = [text[w.start : w.end].strip() for w in _words(encoding, 0, [text])]
    assert shown == ["书", "的", "内", "容", "unbelievably", "stale,", "很", "好"]
