"""Chat conversations for causal-LM fine-tuning: a JSONL loader and chat-template rendering with loss labels.

A conversation is a list of OpenAI-style messages ``{"role": "system" | "user" | "assistant", "content": str}``;
a JSONL file holds one ``{"messages": [...]}`` object per line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .data import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # label of a token that carries no loss


def render(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> tuple[list[int], list[int]]:
    """Token ids of ``messages`` in the tokenizer's chat template, and labels that are ``IGNORE_INDEX``
    everywhere except on each assistant reply and the end marker (the eos token) that closes it.

    A reply is located in the rendering of the conversation up to that reply, which must be a prefix of
    the whole rendering (true of ChatML and other templates that render each message on its own).
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    end = tokenizer.eos_token
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(prefix):
            raise ValueError(f"the chat template renders messages[:{i + 1}] differently within the whole conversation")
        reply = message["content"] + end
        start = prefix.rfind(reply)
        if start < 0:
            raise ValueError(f"the chat template does not render messages[{i}] as its content followed by {end!r}")
        spans.append((start, start + len(reply)))

    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoding["input_ids"]
    labels = [
        token if any(a <= first < b for a, b in spans) else IGNORE_INDEX
        for token, (first, _) in zip(ids, encoding["offset_mapping"])
    ]
    return ids, labels


def _check_messages(record: object, where: str) -> list[Message]:
    """The messages of one JSONL record, or a DataError naming ``where`` and the field."""
    if not isinstance(record, dict) or "messages" not in record:
        raise DataError(f"{where}: missing field 'messages' (expected {{\"messages\": [...]}})")
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise DataError(f"{where}: field '{field}' must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: field '{field}.role': unknown role {role!r} (expected {', '.join(ROLES)})")
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{where}: field '{field}.content' must be a non-empty string")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: field 'messages' has no assistant turn, so nothing to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _records(path: str | Path) -> Iterator[tuple[str, object]]:
    """(``"<file>, line N"``, parsed object) for each non-blank line of a JSONL file."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: invalid JSON: {err.msg} (column {err.colno})") from None


def load_conversations(path: str | Path) -> list[list[Message]]:
    """Conversations from a JSONL file, one ``{"messages": [...]}`` per non-blank line.

    Raises DataError naming the file, the line (from 1) and the field for invalid JSON, a missing
    ``messages``, an unknown role, empty content or a conversation without an assistant turn.
    """
    return [d.messages for d in load_dialogues(path)]


@dataclass
class Dialogue:
    """A conversation and, for each assistant turn, the id of the knowledge-base entry it is grounded on."""

    messages: list[Message]
    kb: list[str | None]
    where: str


def load_dialogues(path: str | Path) -> list[Dialogue]:
    """Conversations with an optional ``"kb"`` field: one entry id (or null) per assistant turn, or one
    id for a single-answer conversation. Errors as in ``load_conversations``."""
    dialogues = []
    for where, record in _records(path):
        messages = _check_messages(record, where)
        replies = sum(m["role"] == "assistant" for m in messages)
        kb = record.get("kb")
        kb = [kb] if isinstance(kb, str) else ([None] * replies if kb is None else kb)
        if not isinstance(kb, list) or len(kb) != replies or not all(k is None or isinstance(k, str) for k in kb):
            raise DataError(f"{where}: field 'kb' must be an entry id or a list of {replies} ids (one per assistant turn)")
        dialogues.append(Dialogue(messages, kb, where))
    if not dialogues:
        raise DataError(f"{path}: no conversations")
    return dialogues


@dataclass
class Question:
    """A held-out customer question and the KB entry that answers it (None: the KB does not)."""

    text: str
    kb: str | None
    where: str


def load_questions(path: str | Path) -> list[Question]:
    """Questions from a JSONL file of ``{"question": str, "kb": id | null}`` objects."""
    questions = []
    for where, record in _records(path):
        if not isinstance(record, dict) or not isinstance(record.get("question"), str) or not record["question"].strip():
            raise DataError(f"{where}: field 'question' must be a non-empty string")
        kb = record.get("kb")
        if kb is not None and not isinstance(kb, str):
            raise DataError(f"{where}: field 'kb' must be an entry id or null")
        questions.append(Question(record["question"], kb, where))
    if not questions:
        raise DataError(f"{path}: no questions")
    return questions
