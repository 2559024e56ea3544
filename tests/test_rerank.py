"""LM re-ranking of retrieved passages (ecomnlp.rerank) on a tiny random causal LM."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ecomnlp.knowledge import Entry, Hit

ENTRIES = [Entry("returns", "Returns", "Return any item within 30 days.", None, "test"),
           Entry("shipping", "Shipping", "Orders ship in 2 days, tracked by email.", None, "test",
                 ("when will my order arrive?", "how do I track my parcel?")),
           Entry("tuihuo", "退货", "7天无理由退货。", None, "test")]


def test_cached_passage_prompts_give_the_same_likelihood(tiny_lm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A passage's prompt runs once and its KV cache is reused: the scores equal a plain forward pass over the
    whole prompt + question, and reusing the cache for another question does not alter it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ecomnlp.rerank as rerank
    from ecomnlp.rerank import passage_prompt, question_log_likelihood

    torch.manual_seed(0)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_lm).eval(), AutoTokenizer.from_pretrained(tiny_lm)
    question = "can I send back a lamp?"
    answer = tokenizer(question, add_special_tokens=False)["input_ids"]

    def whole(entry: Entry) -> float:
        text = tokenizer.apply_chat_template([{"role": "user", "content": passage_prompt(entry)}], tokenize=False,
                                             add_generation_prompt=True)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1:-1]
        return logits.log_softmax(-1).gather(1, torch.tensor(answer)[:, None]).mean().item()

    prefixes: dict = {}
    first = question_log_likelihood(model, tokenizer, ENTRIES, question, prefixes)
    assert first == pytest.approx([whole(e) for e in ENTRIES], abs=1e-4)
    assert len(prefixes) == 3 and len(set(first)) == 3 and all(x < 0 for x in first)
    question_log_likelihood(model, tokenizer, ENTRIES, "7天可以退货吗", prefixes)
    assert question_log_likelihood(model, tokenizer, ENTRIES, question, prefixes) == pytest.approx(first, abs=1e-5)
    monkeypatch.setattr(rerank, "CACHED_PROMPTS", 2)  # the least recently used prompt goes
    question_log_likelihood(model, tokenizer, ENTRIES[:1], question, prefixes)
    question_log_likelihood(model, tokenizer, ENTRIES[2:], question, prefixes)
    assert list(prefixes) == [passage_prompt(ENTRIES[0]), passage_prompt(ENTRIES[2])]
    assert question_log_likelihood(model, tokenizer, ENTRIES, "") == [0.0, 0.0, 0.0]


def test_passage_prompt_shows_the_first_example_questions(monkeypatch: pytest.MonkeyPatch) -> None:
    import ecomnlp.rerank as rerank

    assert rerank.passage_prompt(ENTRIES[0]) == f"Returns\nReturn any item within 30 days.\n\n{rerank.INSTRUCTION}"
    assert rerank.passage_prompt(ENTRIES[1]) == ("Shipping\nOrders ship in 2 days, tracked by email.\n\n"
                                                 f"{rerank.QUESTIONS_HEADING}\n- when will my order arrive?\n"
                                                 f"- how do I track my parcel?\n\n{rerank.INSTRUCTION}")
    monkeypatch.setattr(rerank, "PROMPT_QUESTIONS", 1)
    assert "arrive" in rerank.passage_prompt(ENTRIES[1]) and "track my parcel" not in rerank.passage_prompt(ENTRIES[1])


def test_reorder_and_weight_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import ecomnlp.rerank as rerank

    hits = [Hit(ENTRIES[0], 0.90), Hit(ENTRIES[1], 0.885), Hit(ENTRIES[2], 0.70)]
    likelihood = [-3.0, -1.0, -0.5]
    assert [h.entry.id for h in rerank.reorder(hits, likelihood, 0.0)] == ["returns", "shipping", "tuihuo"]
    assert [h.entry.id for h in rerank.reorder(hits, likelihood, 0.02)] == ["shipping", "returns", "tuihuo"]
    assert [h.entry.id for h in rerank.reorder(hits, likelihood, 1.0)] == ["tuihuo", "shipping", "returns"]

    # question a's entry is second by cosine and the LM prefers it; question b's is first and must stay first
    scores = {"a": [-3.0, -1.0, -0.5], "b": [-1.0, -3.0, -0.9]}
    monkeypatch.setattr(rerank, "question_log_likelihood", lambda model, tok, entries, q, prefixes: scores[q])
    chosen, likelihoods = rerank.choose_weight(None, None, [hits, hits], ["a", "b"], ["shipping", "returns"])
    assert likelihoods == [scores["a"], scores["b"]]
    # a: shipping overtakes returns once 0.885 - w > 0.90 - 3w, i.e. w > 0.0075; 0.01 is the smallest such candidate
    assert chosen == {"rerank_weight": 0.01, "recall@1_before_rerank": 0.5, "recall@1": 1.0}
