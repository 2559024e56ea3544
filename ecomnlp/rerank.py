"""Re-ranking the support bot's retrieved passages with its causal LM (query likelihood, as in UPR: Sachan
et al., 2022): each candidate entry gains by how likely the LM's base weights (no adapter) find the
customer's question after that entry's passage and the customer questions it already answers (its
``questions``, e.g. from past dialogues). The combined score is the encoder's cosine plus ``weight``
times the mean log-probability of the question's tokens; ``choose_weight`` picks the weight on held-out
questions by recall@1.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.nn import functional as F

from .knowledge import Entry, Hit

INSTRUCTION = "Write a question a customer could ask that this passage answers."
QUESTIONS_HEADING = "Questions customers asked about this:"
PROMPT_QUESTIONS = 8  # at most this many of an entry's questions go into its prompt (the first ones: its own, then learned)
CACHED_PROMPTS = 64  # entry prompts whose KV caches question_log_likelihood keeps (SmolLM2-135M: 46 KB a token)
WEIGHTS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)  # candidates for choose_weight; 0 keeps the encoder's order


def passage_prompt(entry: Entry) -> str:
    """The user turn a question is scored after: the entry's title and passage, its first ``PROMPT_QUESTIONS``
    example questions (one per line, under ``QUESTIONS_HEADING``) where it has some, then ``INSTRUCTION``."""
    questions = "".join(f"\n- {q}" for q in entry.questions[:PROMPT_QUESTIONS])
    return f"{entry.title}\n{entry.text}\n\n" + (f"{QUESTIONS_HEADING}{questions}\n\n" if questions else "") + INSTRUCTION


def question_log_likelihood(model: Any, tokenizer: Any, entries: Sequence[Entry], question: str,
                            prefixes: dict[str, Any] | None = None) -> list[float]:
    """Per entry, the mean log-probability of ``question``'s tokens after the entry's ``passage_prompt``
    (rendered as a user turn of the model's chat template).

    Each passage's prompt is run once and its KV cache kept in ``prefixes`` (pass the same dict again, with
    the same model state, to reuse them; the least recently used go beyond ``CACHED_PROMPTS``); a question then
    costs one forward pass over its own tokens, all the entries' caches left-padded into one batch.
    """
    from transformers import DynamicCache

    prefixes = {} if prefixes is None else prefixes
    answer = tokenizer(question, add_special_tokens=False)["input_ids"]
    if not answer or not entries:
        return [0.0] * len(entries)
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA layers live inside it
    device = next(lm.parameters()).device
    keys = [passage_prompt(entry) for entry in entries]
    with torch.inference_mode():
        for key in keys:
            if key in prefixes:
                prefixes[key] = prefixes.pop(key)  # most recently used last
            else:
                text = tokenizer.apply_chat_template([{"role": "user", "content": key}], tokenize=False,
                                                     add_generation_prompt=True)
                prompt = lm(input_ids=torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=device),
                            use_cache=True, logits_to_keep=1)
                prefixes[key] = ([(layer.keys, layer.values) for layer in prompt.cache.layers], prompt.logits[0, -1])
        cached = [prefixes[key] for key in keys]
        while len(prefixes) > max(CACHED_PROMPTS, len(entries)):
            del prefixes[next(iter(prefixes))]
        lengths = torch.tensor([layers[0][0].shape[2] for layers, _ in cached], device=device)
        width, n, q = int(lengths.max()), len(entries), len(answer)

        def padded(tensor: torch.Tensor) -> torch.Tensor:  # (1, heads, length, dim), left-padded to width
            return F.pad(tensor, (0, 0, width - tensor.shape[2], 0))

        cache = DynamicCache([(torch.cat([padded(layers[i][0]) for layers, _ in cached]),
                               torch.cat([padded(layers[i][1]) for layers, _ in cached]))
                              for i in range(len(cached[0][0]))])
        mask = torch.cat([torch.arange(width, device=device) >= width - lengths[:, None],
                          torch.ones(n, q, dtype=torch.bool, device=device)], dim=1).long()
        out = lm(input_ids=torch.tensor([answer] * n, device=device), attention_mask=mask, cache=cache,
                 position_ids=lengths[:, None] + torch.arange(q, device=device), use_cache=True)
        # the prompt's last position predicts the question's first token
        logits = torch.cat([torch.stack([last for _, last in cached])[:, None], out.logits[:, :-1]], dim=1)
        picked = logits.log_softmax(-1).gather(2, torch.tensor(answer, device=device).expand(n, -1)[..., None])
    return picked.squeeze(-1).mean(1).tolist()


def reorder(hits: Sequence[Hit], likelihoods: Sequence[float], weight: float) -> list[Hit]:
    """``hits`` by cosine + ``weight`` x likelihood, best first (ties keep the encoder's order)."""
    order = sorted(range(len(hits)), key=lambda i: -(hits[i].score + weight * likelihoods[i]))
    return [hits[i] for i in order]


def choose_weight(model: Any, tokenizer: Any, candidates: Sequence[Sequence[Hit]], questions: Sequence[str],
                  entries: Sequence[str]) -> tuple[dict[str, float], list[list[float]]]:
    """The weight in ``WEIGHTS`` whose re-ranking of ``candidates`` (each question's retrieved hits) puts the
    question's entry (``entries``) first most often, the smallest on a tie, with recall@1 before and after;
    and each question's ``question_log_likelihood`` of its candidates."""
    prefixes: dict[str, Any] = {}
    likelihoods = [question_log_likelihood(model, tokenizer, [h.entry for h in hits], q, prefixes)
                   for hits, q in zip(candidates, questions)]

    def first_right(weight: float) -> int:
        return sum(reorder(hits, ll, weight)[0].entry.id == entry
                   for hits, ll, entry in zip(candidates, likelihoods, entries))

    best = max(WEIGHTS, key=lambda w: (first_right(w), -w))
    n = max(1, len(questions))
    return ({"rerank_weight": best, "recall@1_before_rerank": first_right(0.0) / n, "recall@1": first_right(best) / n},
            likelihoods)
