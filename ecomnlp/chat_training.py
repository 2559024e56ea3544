"""Supervised fine-tuning of a causal LM's LoRA adapter on support dialogues grounded on a knowledge base.

Each assistant turn becomes one training example: the system prompt holds the ``top_k`` passages
the shared encoder retrieves for the customer's question (the right entry always among them, so the
model learns to answer from what it is given), then the conversation so far, then the reply; the
loss is on the reply only. Training runs through the same Lightning path as the encoder tasks.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.nn import functional as F
from torchmetrics.text import Perplexity

from .artifact import CHAT_KIND, atomic_dir, base_checksum, write_card
from .chat_data import IGNORE_INDEX, Dialogue, Message, load_dialogues, load_questions, render
from .config import (CHAT_GENERATION, LLAMA_LORA, ChatDataConfig, GenerationSettings, LoraSettings, RetrievalSettings,
                     TrainerSettings)
from .data import DataError, LengthGroupedBatches
from .knowledge import Entry, KnowledgeBase, Retriever, choose_threshold
from .models import resolve
from .rerank import choose_weight, reorder
from .retrieval_training import ADAPTER as RETRIEVAL_ADAPTER
from .retrieval_training import train_retrieval_adapter
from .training import Prepared, Split, TaskData, TrainableModule, _fit_module, _version

log = logging.getLogger(__name__)
KB_FILE = "kb.jsonl"
RETRIEVAL_DIR = "retrieval"  # the encoder's retrieval adapter, inside a chat directory
TASK = "support_chat"


def support_task(store: str) -> Any:
    from .tasks.support_chat import SupportChat

    return SupportChat(store)


def load_causal_lm(model: str) -> tuple[Any, Any, Path]:
    """(fp32 causal LM, its tokenizer, its folder) for a model name or a local HF directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = resolve(model)
    lm = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return lm, AutoTokenizer.from_pretrained(base_dir), base_dir


def context_window(lm: Any) -> int:
    return int(lm.config.max_position_embeddings)


@dataclass
class ChatSplit(Split):
    """Token ids with per-token labels (``IGNORE_INDEX`` outside the reply); ``targets`` holds the labels."""

    def batch(self, index: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        width = max(len(self.ids[i]) for i in index)
        input_ids = torch.full((len(index), width), pad_id, dtype=torch.long)
        labels = torch.full((len(index), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(index), width), dtype=torch.long)
        for row, i in enumerate(index):
            n = len(self.ids[i])
            input_ids[row, :n], labels[row, :n], mask[row, :n] = (torch.tensor(self.ids[i]),
                                                                  torch.tensor(self.targets[i]), 1)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def passages_for(retriever: Retriever, question: str, gold: str | None, k: int) -> list[Entry]:
    """The top ``k`` retrieved entries for ``question``, with ``gold`` replacing the last one if it was missed."""
    entries = [hit.entry for hit in retriever.search(question, k)]
    if gold is not None and gold not in {e.id for e in entries}:
        entries[-1] = retriever.kb[gold]
    return entries


def grounded(task: Any, passages: Sequence[Entry], conversation: list[Message]) -> list[Message]:
    """The conversation without its own system messages, after the task's system prompt with ``passages``."""
    return [{"role": "system", "content": task.system_prompt(passages)},
            *[m for m in conversation if m["role"] != "system"]]


def reply_example(tokenizer: Any, messages: list[Message]) -> tuple[list[int], list[int]]:
    """Token ids of ``messages`` and labels on the last (assistant) message only."""
    ids, labels = render(tokenizer, messages)
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return ids, [IGNORE_INDEX] * prompt_tokens + labels[prompt_tokens:]


def build_split(dialogues: Sequence[Dialogue], retriever: Retriever, task: Any, tokenizer: Any, k: int,
                max_length: int) -> ChatSplit:
    """One example per assistant turn, grounded on the passages retrieved for the user turn before it.
    Earlier turns are dropped (oldest first) when an example does not fit in ``max_length`` tokens."""
    ids, labels = [], []
    for dialogue in dialogues:
        turns = [i for i, m in enumerate(dialogue.messages) if m["role"] == "assistant"]
        for turn, gold in zip(turns, dialogue.kb):
            users = [m for m in dialogue.messages[:turn] if m["role"] == "user"]
            if not users:
                raise DataError(f"{dialogue.where}: field 'messages[{turn}]': an assistant turn before any user turn")
            if gold is not None and gold not in retriever.kb.ids:
                raise DataError(f"{dialogue.where}: field 'kb': unknown knowledge-base entry '{gold}'")
            passages = passages_for(retriever, users[-1]["content"], gold, k)
            conversation = dialogue.messages[: turn + 1]
            while True:
                x, y = reply_example(tokenizer, grounded(task, passages, conversation))
                user_turns = [i for i, m in enumerate(conversation) if m["role"] == "user"]
                if len(x) <= max_length or len(user_turns) == 1:
                    break
                conversation = conversation[user_turns[1]:]
            if len(x) > max_length:
                raise DataError(f"{dialogue.where}: field 'messages[{turn}]': {len(x)} tokens with its passages, "
                                f"over data.max_length {max_length}")
            ids.append(x)
            labels.append(y)
    return ChatSplit(ids, labels)


def reply_logits(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits only at the positions whose next token is learned in some row of the batch
    (the LM head over the whole vocabulary is skipped for prompt positions), and their targets."""
    targets = batch["labels"][:, 1:]
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    return logits.float(), targets[:, keep]


class ChatModule(TrainableModule):
    """A peft-wrapped causal LM: next-token loss on reply tokens; validation perplexity (torchmetrics)."""

    def __init__(self, model: Any, settings: TrainerSettings) -> None:
        super().__init__(settings)
        self.model = model
        self.val_perplexity = Perplexity(ignore_index=IGNORE_INDEX)

    def training_step(self, batch: dict[str, torch.Tensor], _: int) -> torch.Tensor:
        logits, targets = reply_logits(self.model, batch)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], _: int) -> None:
        self.val_perplexity.update(*reply_logits(self.model, batch))

    def on_validation_epoch_end(self) -> None:
        self.log("val/perplexity", self.val_perplexity.compute(), prog_bar=True)
        self.val_perplexity.reset()


@torch.inference_mode()
def perplexity(model: Any, split: ChatSplit, pad_id: int, batch_size: int) -> float:
    """Perplexity of ``model`` on the reply tokens of ``split``."""
    metric = Perplexity(ignore_index=IGNORE_INDEX)
    was_training = model.training
    model.eval()
    for index in LengthGroupedBatches([len(x) for x in split.ids], batch_size, shuffle=False):
        metric.update(*reply_logits(model, split.batch(index, pad_id)))
    model.train(was_training)
    return metric.compute().item()


def retrieval_report(retriever: Retriever, questions_path: str, k: int, lm: Any = None, tokenizer: Any = None,
                     rerank: int = 0) -> dict[str, Any]:
    """Recall@k of the answerable questions and the hand-off threshold chosen on all of them; with ``rerank``
    > 0, the weight of ``lm``'s re-ranking of the top ``rerank`` entries, chosen on the answerable ones
    (``rerank.choose_weight``), and recall@k after it."""
    questions = load_questions(questions_path)
    for q in questions:
        if q.kb is not None and q.kb not in retriever.kb.ids:
            raise DataError(f"{q.where}: field 'kb': unknown knowledge-base entry '{q.kb}'")
    hits = retriever.search_many([q.text for q in questions], max(k, rerank))
    answerable = [(q, h) for q, h in zip(questions, hits) if q.kb is not None]
    unanswerable = [h for q, h in zip(questions, hits) if q.kb is None]
    report: dict[str, Any] = {"questions": len(answerable), "out_of_kb_questions": len(unanswerable)}
    if answerable and unanswerable:
        report["threshold"] = choose_threshold([h[0].score for _, h in answerable], [h[0].score for h in unanswerable])
    if answerable and rerank:
        chosen, likelihoods = choose_weight(lm, tokenizer, [h for _, h in answerable], [q.text for q, _ in answerable],
                                            [q.kb for q, _ in answerable])
        report.update(chosen)
        answerable = [(q, reorder(h, ll, report["rerank_weight"])) for (q, h), ll in zip(answerable, likelihoods)]
    if answerable:
        report[f"recall@{k}"] = sum(q.kb in {x.entry.id for x in h[:k]} for q, h in answerable) / len(answerable)
    return report


def example_reply(model: Any, tokenizer: Any, retriever: Retriever, task: Any, top_k: int, retrieval: dict[str, Any],
                  dialogues: Sequence[Dialogue], rerank: int = 0,
                  generation: GenerationSettings = CHAT_GENERATION) -> dict[str, Any]:
    """The trained bot's reply (decoded with ``generation``, which should be deterministic) to the first held-out
    question it does not hand off (else the first question), kept in the card: a loaded model must give the same."""
    from .chatbot import SupportBot

    bot = SupportBot(model, tokenizer, retriever, task, top_k, retrieval.get("threshold"), generation,
                     rerank_depth=rerank, rerank_weight=retrieval.get("rerank_weight", 0.0))
    questions = [next(m["content"] for m in d.messages if m["role"] == "user") for d in dialogues]
    answered = (q for q in questions if not bot.ground([{"role": "user", "content": q}]).handoff)
    question = next(answered, questions[0])
    return {"question": question, **bot.chat([{"role": "user", "content": question}])}


def question_pairs(dialogues: Sequence[Dialogue]) -> list[tuple[str, str]]:
    """(the user question before each assistant turn, its entry id) for turns grounded on an entry."""
    pairs = []
    for dialogue in dialogues:
        turns = [i for i, m in enumerate(dialogue.messages) if m["role"] == "assistant"]
        for turn, entry in zip(turns, dialogue.kb):
            users = [m["content"] for m in dialogue.messages[:turn] if m["role"] == "user"]
            if entry is not None and users:
                pairs.append((users[-1], entry))
    return pairs


def train_chat(
    data: ChatDataConfig,
    out: str,
    model: str = "smollm2-135m-instruct",
    encoder: str = "e5-small-multilingual",
    store: str = "our store",
    lora: LoraSettings = LLAMA_LORA,
    trainer: TrainerSettings = TrainerSettings(lr=2e-4, max_epochs=3),
    retrieval: RetrievalSettings = RetrievalSettings(),
    generation: GenerationSettings = CHAT_GENERATION,
) -> dict[str, Any]:
    """Fine-tune a LoRA adapter of ``model`` on grounded support dialogues; save the chat directory ``out``.

    With ``retrieval.example_questions`` the training dialogues' questions join the knowledge-base entries
    they were answered from, as more ways to retrieve them. Then, unless ``retrieval.epochs`` is 0, a retrieval adapter of the encoder learns to map the
    training questions to their entries (validated on the answerable ``data.questions``). Then the
    causal LM's adapter learns the replies, each grounded on the passages that retriever finds.
    The directory holds the LM adapter (peft format), the retrieval adapter (``retrieval/``),
    ``card.json`` (base model and encoder with checksums, retrieval settings, the hand-off threshold, how the bot
    decodes its replies (``generation``), perplexity before and after) and a copy of the knowledge base, so
    ``ecomnlp.load(out)`` needs nothing else.
    """
    import lightning as L
    from peft import get_peft_model

    from .backbone import Backbone, lora_config

    started = time.perf_counter()
    L.seed_everything(trainer.seed, workers=True)
    task = support_task(store)
    train_dialogues = load_dialogues(data.train)
    if data.valid:
        valid_dialogues = load_dialogues(data.valid)
    else:
        order = list(range(len(train_dialogues)))
        random.Random(trainer.seed).shuffle(order)
        cut = max(1, round(len(order) * data.valid_fraction))
        valid_dialogues = [train_dialogues[i] for i in sorted(order[:cut])]
        train_dialogues = [train_dialogues[i] for i in sorted(order[cut:])]
    kb = KnowledgeBase.load(data.kb)
    if retrieval.example_questions:
        kb = kb.with_questions(question_pairs(train_dialogues), str(data.train))
    encoder_dir = resolve(encoder)
    retriever = Retriever(kb, encoder, backbone=Backbone(encoder_dir))
    lm, tokenizer, base_dir = load_causal_lm(model)
    max_length = min(data.max_length, context_window(lm))
    adapter_report: dict[str, Any] = {}
    if retrieval.epochs > 0:
        held_out = ([(q.text, q.kb) for q in load_questions(data.questions) if q.kb is not None] if data.questions
                    else question_pairs(valid_dialogues))
        adapter_report = train_retrieval_adapter(retriever, question_pairs(train_dialogues), held_out, retrieval,
                                                 data.top_k, trainer, Path(out + ".retrieval"))
        retriever = Retriever(kb, encoder, backbone=retriever.backbone, adapter=RETRIEVAL_ADAPTER)
    splits = {name: build_split(d, retriever, task, tokenizer, data.top_k, max_length)
              for name, d in (("train", train_dialogues), ("valid", valid_dialogues))}
    report = {**adapter_report, **(retrieval_report(retriever, data.questions, data.top_k, lm, tokenizer,
                                                    retrieval.rerank) if data.questions else {})}
    if "threshold" not in report:
        log.warning("no answerable and out-of-KB questions given (data.questions): the bot never hands off")
    if retrieval.rerank and "rerank_weight" not in report:
        log.warning("no answerable questions given (data.questions) to weigh the re-ranking: the encoder's order stays")

    peft_model = get_peft_model(lm, lora_config(lora, "CAUSAL_LM"))
    pad_id = tokenizer.pad_token_id
    with peft_model.disable_adapter():
        before = perplexity(peft_model, splits["valid"], pad_id, data.eval_batch_size)
    prepared = Prepared(splits["train"], splits["valid"], None, None, max_length,
                        {"train_examples": len(splits["train"].ids), "valid_examples": len(splits["valid"].ids)})
    module = ChatModule(peft_model, trainer)
    datamodule = TaskData(prepared, pad_id, data.batch_size, data.eval_batch_size, trainer.seed)
    fit, best = _fit_module(module, datamodule, trainer, "val/perplexity", Path(out), mode="min")
    summary: dict[str, Any] = {"out": out, "steps": fit.global_step, **prepared.stats}
    if not fit.is_global_zero:
        return summary
    after = perplexity(peft_model, splits["valid"], pad_id, data.eval_batch_size)
    summary.update(perplexity={"before": before, "after": after}, retrieval=report,
                   example=example_reply(peft_model, tokenizer, retriever, task, data.top_k, report, valid_dialogues,
                                         retrieval.rerank, generation),
                   wall_time_s=round(time.perf_counter() - started, 1))
    card = {
        "task": TASK, "kind": CHAT_KIND, "store": store,
        "base_model": {"name": model, "path": str(base_dir), "checksum": base_checksum(base_dir)},
        "encoder": {"name": encoder, "path": str(encoder_dir), "checksum": base_checksum(encoder_dir),
                    "query_prefix": retriever.query_prefix, "passage_prefix": retriever.passage_prefix,
                    "adapter": retriever.adapter},
        "retrieval": {"top_k": data.top_k, "threshold": report.get("threshold"),
                      "rerank_weight": report.get("rerank_weight", 0.0), **dataclasses.asdict(retrieval)},
        "max_length": max_length,
        "generation": dataclasses.asdict(generation),
        "lora": dataclasses.asdict(lora),
        "training": {**prepared.stats, "steps": fit.global_step, "epochs": fit.current_epoch, "seed": trainer.seed,
                     "best_checkpoint": best, "wall_time_s": summary["wall_time_s"]},
        "metrics": {"perplexity": summary["perplexity"], "retrieval": report},
        "example": summary["example"],
        "ecomnlp_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with atomic_dir(out) as tmp:
        peft_model.save_pretrained(tmp)
        if retriever.adapter:
            retriever.backbone.save_adapter(retriever.adapter, tmp / RETRIEVAL_DIR)
        (tmp / KB_FILE).write_text(kb.to_jsonl(), encoding="utf-8")
        write_card(tmp, card)
    return summary

