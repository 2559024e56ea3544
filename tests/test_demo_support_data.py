"""The fictional Maple Lane Market support data in ecomnlp/demo_data/support: formats, counts, grounding."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import ecomnlp
from ecomnlp.chat_data import load_conversations, load_questions

SUPPORT = Path(ecomnlp.__file__).resolve().parent / "demo_data" / "support"
CJK = re.compile(r"[\u4e00-\u9fff]")


def read_jsonl(name: str) -> list[dict]:
    with (SUPPORT / name).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def norm(text: str) -> str:
    """Lowercased, without punctuation or whitespace (CJK characters are kept)."""
    return re.sub(r"[\W_]+", "", text.lower())


@pytest.fixture(scope="module")
def kb() -> dict[str, dict]:
    entries = read_jsonl("kb.jsonl")
    ids = [e["id"] for e in entries]
    assert len(ids) == len(set(ids)), "duplicate kb ids"
    return {e["id"]: e for e in entries}


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return read_jsonl("train.jsonl")


def test_files_present() -> None:
    names = {"kb.jsonl", "train.jsonl", "valid.jsonl", "test.jsonl", "README.md"}
    assert names <= {p.name for p in SUPPORT.iterdir()}


def test_kb_entries(kb: dict[str, dict]) -> None:
    assert len(kb) == 60
    keys = [e["key"].lower() for e in kb.values()]
    assert len(keys) == len(set(keys)), "keys must be distinct"
    for entry in kb.values():
        assert set(entry) == {"id", "topic", "lang", "title", "text", "key"}, entry["id"]
        assert entry["lang"] in ("en", "zh"), entry["id"]
        assert entry["key"] in entry["text"], f"{entry['id']}: key not verbatim in text"
        assert bool(CJK.search(entry["text"])) == (entry["lang"] == "zh"), entry["id"]
        for other in kb.values():
            if other is not entry:
                assert entry["key"].lower() not in other["text"].lower(), \
                    f"key of {entry['id']} appears in the text of {other['id']}"
    zh_share = sum(e["lang"] == "zh" for e in kb.values()) / len(kb)
    assert 0.10 <= zh_share <= 0.30


def test_train_dialogues(kb: dict[str, dict], train: list[dict]) -> None:
    conversations = load_conversations(SUPPORT / "train.jsonl")
    assert len(conversations) == len(train)
    assert 250 <= len(train) <= 350
    for record, messages in zip(train, conversations):
        roles = [m["role"] for m in messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2), roles
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        assert len(record["kb"]) == len(replies)
        for reply, entry_id in zip(replies, record["kb"]):
            assert entry_id in kb, entry_id
            assert kb[entry_id]["key"].lower() in reply.lower(), f"{entry_id}: key missing from {reply!r}"
    two_turn = [r for r in train if len(r["kb"]) == 2]
    assert len(two_turn) >= 40 and all(a != b for a, b in (r["kb"] for r in two_turn))


def test_held_out_questions(kb: dict[str, dict], train: list[dict]) -> None:
    user_turns = {norm(m["content"]) for r in train for m in r["messages"] if m["role"] == "user"}
    valid, test = load_questions(SUPPORT / "valid.jsonl"), load_questions(SUPPORT / "test.jsonl")
    for questions, per_entry in ((valid, 1), (test, 2)):
        answerable = [q.kb for q in questions if q.kb is not None]
        assert sorted(answerable) == sorted(list(kb) * per_entry)  # every entry, per_entry times
        out_of_kb = [q for q in questions if q.kb is None]
        assert len(out_of_kb) == 40 and any(CJK.search(q.text) for q in out_of_kb)
    for q in valid + test:
        assert norm(q.text) not in user_turns, f"held-out question seen in train: {q.text!r}"
    assert len({norm(q.text) for q in valid + test}) == len(valid + test)
