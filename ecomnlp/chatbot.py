"""A trained support chat model: replies grounded on retrieved knowledge-base passages, a hand-off to a
human when nothing relevant is retrieved, token streaming, and customer text logged with PII masked;
``evaluate_bot`` measures one on held-out questions.

    bot = ecomnlp.load("runs/support")
    bot.chat([{"role": "user", "content": "How long do I have to return a lamp?"}])
    for piece in bot.stream(messages): print(piece, end="")
"""
from __future__ import annotations

import dataclasses
import logging
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from .artifact import check_base, read_card
from .chat_data import Message, Question
from .chat_training import KB_FILE, RETRIEVAL_DIR, context_window, grounded, load_causal_lm, support_task
from .config import CHAT_GENERATION, GenerationSettings
from .data import DataError
from .generation import prompt_ids, stream
from .knowledge import Hit, KnowledgeBase, Retriever
from .pii import mask_pii
from .rerank import question_log_likelihood, reorder

log = logging.getLogger(__name__)
# new tokens of each reply the key-fact evaluation generates: at 48, Chinese replies (two to three tokens a
# character) were cut mid-sentence
EVAL_REPLY_TOKENS = 96
_DASHES = re.compile(r"[\u2010-\u2015\u2212]")


@dataclass
class Grounding:
    """What the last customer message retrieved, and whether the bot hands off instead of answering."""

    question: str
    hits: list[Hit]
    handoff: bool

    @property
    def sources(self) -> list[str]:
        return [] if self.handoff else [h.entry.id for h in self.hits]


class SupportBot:
    """A causal LM with its LoRA adapter, a retriever over the store's knowledge base, and the task's prompts.

    ``use_adapter`` / ``use_retrieval`` switch off the fine-tuning or the grounding (for baselines). With
    ``rerank_depth`` > 0 and a ``rerank_weight``, the encoder's top ``rerank_depth`` entries are re-ranked by
    the LM's base weights (``ecomnlp.rerank``) before the top ``top_k`` go into the prompt. ``settings``: how
    replies are decoded unless a call overrides them (a loaded bot: as trained, the card's ``generation``).
    """

    def __init__(self, model: Any, tokenizer: Any, retriever: Retriever, task: Any, top_k: int,
                 threshold: float | None, settings: GenerationSettings = CHAT_GENERATION,
                 rerank_depth: int = 0, rerank_weight: float = 0.0) -> None:
        self.model, self.tokenizer, self.retriever, self.task = model.eval(), tokenizer, retriever, task
        self.top_k, self.threshold, self.settings = top_k, threshold, settings
        self.rerank_depth, self.rerank_weight = rerank_depth, rerank_weight
        self._prefixes: dict[tuple[str, str, str], Any] = {}  # the passages' prompts, prefilled for re-ranking
        self.use_adapter, self.use_retrieval = True, True

    def ground(self, messages: list[Message]) -> Grounding:
        users = [m for m in messages if m["role"] == "user"]
        if not users:
            raise ValueError("messages hold no user message to answer")
        question = users[-1]["content"]
        log.info("customer: %s", mask_pii(question))
        if not self.use_retrieval:
            return Grounding(question, [], False)
        hits = self.retriever.search(question, max(self.top_k, self.rerank_depth))
        handoff = self.threshold is not None and hits[0].score < self.threshold  # the encoder's best cosine
        if self.rerank_depth and self.rerank_weight and not handoff:
            with self.model.disable_adapter():
                likelihoods = question_log_likelihood(self.model, self.tokenizer, [h.entry for h in hits], question,
                                                      self._prefixes)
            hits = reorder(hits, likelihoods, self.rerank_weight)
        return Grounding(question, hits[: self.top_k], handoff)

    def prompt(self, messages: list[Message], grounding: Grounding, max_new_tokens: int) -> list[int]:
        """Token ids of the grounded conversation, oldest turns dropped to leave room for the reply."""
        conversation = grounded(self.task, [h.entry for h in grounding.hits], messages)
        window = context_window(self.model)
        if max_new_tokens >= window:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in the model's "
                             f"{window}-token context window")
        return prompt_ids(self.tokenizer, conversation, window - max_new_tokens)

    def stream(self, messages: list[Message], grounding: Grounding | None = None, **settings: Any) -> Iterator[str]:
        """The reply to the last user message, in pieces as they are generated. ``grounding`` is
        ``self.ground(messages)`` unless given; ``settings`` override the ``GenerationSettings`` fields
        (max_new_tokens, temperature, top_p, stop, seed, num_beams)."""
        grounding = grounding or self.ground(messages)
        pieces: list[str] = []
        try:
            for piece in self._reply(messages, grounding, settings):
                pieces.append(piece)
                yield piece
        except GeneratorExit:  # the caller stopped reading: what was said so far is logged
            log.info("assistant: %s", mask_pii("".join(pieces).strip()))
            raise
        log.info("assistant: %s", mask_pii("".join(pieces).strip()))

    def _reply(self, messages: list[Message], grounding: Grounding, settings: dict[str, Any]) -> Iterator[str]:
        if grounding.handoff:
            yield self.task.handoff(grounding.question)
            return
        options = dataclasses.replace(self.settings, **settings)
        ids = self.prompt(messages, grounding, options.max_new_tokens)
        with nullcontext() if self.use_adapter else self.model.disable_adapter():
            yield from stream(self.model, self.tokenizer, ids, options)

    def chat(self, messages: list[Message], **settings: Any) -> dict[str, Any]:
        """The reply as an assistant message plus the ids of the passages it was given, the top
        retrieval score, and whether it hands the customer to a human."""
        grounding = self.ground(messages)
        content = "".join(self.stream(messages, grounding, **settings)).strip()
        top = grounding.hits[0].score if grounding.hits else None
        return {"role": "assistant", "content": content, "sources": grounding.sources, "handoff": grounding.handoff,
                "score": top}


def _fact_text(text: str) -> str:
    """``text`` case-folded, with every dash as "-" and each run of white space as one space."""
    return " ".join(_DASHES.sub("-", text).casefold().split())


def states(reply: str, key: str) -> bool:
    """Whether ``reply`` states the key fact ``key`` (a knowledge-base entry's ``key``), case, dash style and
    spacing aside."""
    return _fact_text(key) in _fact_text(reply)


def evaluate_bot(bot: SupportBot, questions: Sequence[Question], max_new_tokens: int = EVAL_REPLY_TOKENS,
                 replies: int | None = None) -> dict[str, Any]:
    """The bot on held-out questions (``chat_data.load_questions``), as it is switched (``use_adapter``):

    ``recall@k``: answerable questions whose entry is among the ``top_k`` retrieved; ``handoff_rate``: out-of-KB
    questions handed to a human; ``false_handoff_rate``: answerable ones handed off; ``key_fact_rate``: answerable
    questions (the first ``replies`` whose entry has a key; all by default) whose greedy reply ``states`` the
    entry's key. Those replies are generated even where the bot would hand off, so the rate measures the replies
    alone (as scripts/bench_chat.py does). A rate with no question to count is None.
    """
    for q in questions:
        if q.kb is not None and q.kb not in bot.retriever.kb:
            raise DataError(f"{q.where}: field 'kb': unknown knowledge-base entry '{q.kb}'")
    answerable = [q for q in questions if q.kb is not None]
    out_of_kb = [q for q in questions if q.kb is None]

    def handoff_rate(group: list[Question]) -> float | None:
        handed = [bot.ground([{"role": "user", "content": q.text}]).handoff for q in group]
        return sum(handed) / len(handed) if handed else None

    report: dict[str, Any] = {
        "questions": len(answerable), "out_of_kb": len(out_of_kb),
        f"recall@{bot.top_k}": bot_recall(bot, answerable, [bot.top_k])[bot.top_k] if answerable else None,
        "handoff_rate": handoff_rate(out_of_kb), "false_handoff_rate": handoff_rate(answerable)}
    keyed = [q for q in answerable if bot.retriever.kb[q.kb].key is not None][:replies]
    stated = [r["states_key"] for r in key_fact_replies(bot, keyed, max_new_tokens)]
    return {**report, "key_fact_rate": sum(stated) / len(stated) if stated else None, "replies": len(stated)}


def bot_recall(bot: SupportBot, questions: Sequence[Question], cutoffs: Sequence[int]) -> dict[int, float]:
    """For each k in ``cutoffs``, the share of answerable ``questions`` whose entry is among the first k passages
    the bot puts in its prompt (after re-ranking where the bot re-ranks), hand-off aside; each question is
    retrieved once."""
    threshold, bot.threshold = bot.threshold, None
    try:
        grounded = [[h.entry.id for h in bot.ground([{"role": "user", "content": q.text}]).hits] for q in questions]
    finally:
        bot.threshold = threshold
    return {k: sum(q.kb in ids[:k] for q, ids in zip(questions, grounded)) / max(1, len(questions)) for k in cutoffs}


def key_fact_replies(bot: SupportBot, questions: Sequence[Question],
                     max_new_tokens: int = EVAL_REPLY_TOKENS) -> list[dict[str, Any]]:
    """The bot's greedy reply to each question (its entry must have a key) and whether it ``states`` the key.
    Replies are generated even where the bot would hand off (its threshold is off meanwhile), so they measure
    the replies alone; hand-off is measured apart."""
    threshold, bot.threshold = bot.threshold, None
    try:
        replies = []
        for q in questions:
            reply = bot.chat([{"role": "user", "content": q.text}], max_new_tokens=max_new_tokens)
            replies.append({"question": q.text, "kb": q.kb, "reply": reply["content"], "sources": reply["sources"],
                            "states_key": states(reply["content"], bot.retriever.kb[q.kb].key)})
    finally:
        bot.threshold = threshold
    return replies


def load_chatbot(path: str | Path, kb: str | Path | None = None, device: str = "cpu") -> SupportBot:
    """A chat directory from ``train_chat``; ``kb`` replaces the knowledge base saved with it, keeping the saved
    example questions of the entries whose ids it still has."""
    from peft import PeftModel

    from .backbone import Backbone
    from .models import resolve

    card = read_card(path)

    def local(entry: dict[str, Any]) -> Path:
        return resolve(entry["path"] if Path(entry["path"]).is_dir() else entry["name"])

    lm, tokenizer, base_dir = load_causal_lm(str(local(card["base_model"])))
    check_base(card, path, base_dir)
    encoder_dir = local(card["encoder"])
    check_base({"base_model": card["encoder"]}, path, encoder_dir)
    model = PeftModel.from_pretrained(lm, str(path)).to(device)
    enc = card["encoder"]
    backbone = Backbone(encoder_dir)
    if enc["adapter"]:
        backbone.load_adapter(enc["adapter"], Path(path) / RETRIEVAL_DIR)
    knowledge = saved = KnowledgeBase.load(Path(path) / KB_FILE)
    if kb is not None:
        knowledge = KnowledgeBase.load(kb)
        knowledge = knowledge.with_questions([(q, e.id) for e in saved for q in e.questions if e.id in knowledge],
                                             str(Path(path) / KB_FILE))
    retriever = Retriever(knowledge, enc["name"], backbone=backbone.to(device),
                          query_prefix=enc["query_prefix"], passage_prefix=enc["passage_prefix"], adapter=enc["adapter"])
    retrieval = card["retrieval"]
    settings = GenerationSettings(**card["generation"]) if "generation" in card else CHAT_GENERATION  # older cards
    return SupportBot(model, tokenizer, retriever, support_task(card["store"]), retrieval["top_k"],
                      retrieval["threshold"], settings, rerank_depth=retrieval.get("rerank", 0),
                      rerank_weight=retrieval.get("rerank_weight", 0.0))
