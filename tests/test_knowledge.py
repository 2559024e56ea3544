"""Knowledge base: JSONL / Markdown loading and its errors, retrieval with the cached encoder, thresholds."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from conftest import write_jsonl
from ecomnlp.data import DataError
from ecomnlp.knowledge import Entry, KnowledgeBase, Retriever, choose_threshold, slug

MARKDOWN = """# Store help

Anything before the first section is ignored.

## Return window {#returns-window}
Unworn items can be returned.
Key: 30 days
We refund within 30 days of delivery.

## Shipping to the EU
### Costs
Free above 50 EUR.

## Café hours
key:  9 to 5
Question: When are you open?
Open every day.
question:  Are you open on Sunday?
"""

# Texts the tiny tokenizer knows (it is trained on ecomnlp.models.tiny.SAMPLE_TEXTS), so no two are all [UNK].
SMALL_KB = [
    {"id": "coffee", "title": "great coffee", "text": "great coffee, fast shipping"},
    {"id": "refund", "title": "refund", "text": "refund took too long", "key": "too long"},
    {"id": "blender", "title": "the blender", "text": "the blender broke after a week"},
    {"id": "battery", "title": "手机电池", "text": "手机电池很耐用，物流很快"},
    {"id": "hotel", "title": "酒店早餐", "text": "酒店早餐很难吃"},
]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---- loading


def test_jsonl_entries_with_optional_key_and_extra_fields(tmp_path: Path) -> None:
    path = _write(tmp_path / "kb.jsonl",
                  '{"id": "returns-window", "title": " Returns ", "text": "Within 30 days.", "key": "30 days", '
                  '"topic": "returns", "lang": "en"}\n\n'
                  '{"id": "ship_eu.v2", "title": "EU shipping", "text": "Free above 50 EUR.", "key": null}\n')
    kb = KnowledgeBase.load(path)
    assert len(kb) == 2 and kb.ids == ["returns-window", "ship_eu.v2"] and "ship_eu.v2" in kb
    assert kb["returns-window"] == Entry("returns-window", "Returns", "Within 30 days.", "30 days", f"{path}, line 1")
    assert kb["ship_eu.v2"].key is None and kb["ship_eu.v2"].source == f"{path}, line 3"  # blank lines count
    assert list(kb) == kb.entries
    with pytest.raises(KeyError, match="no entry 'nope'"):
        kb["nope"]


def test_markdown_sections_keys_and_default_ids(tmp_path: Path) -> None:
    path = _write(tmp_path / "help.md", MARKDOWN)
    kb = KnowledgeBase.load(path)
    assert kb.ids == ["returns-window", "shipping-to-the-eu", "cafe-hours"]
    returns = kb["returns-window"]
    assert returns.title == "Return window" and returns.key == "30 days" and returns.source == f"{path}, line 5"
    assert returns.text == "Unworn items can be returned.\nWe refund within 30 days of delivery."
    assert kb["shipping-to-the-eu"].text == "### Costs\nFree above 50 EUR." and kb["shipping-to-the-eu"].key is None
    assert kb["cafe-hours"].key == "9 to 5" and kb["cafe-hours"].text == "Open every day."
    assert kb["cafe-hours"].questions == ("When are you open?", "Are you open on Sunday?")
    assert returns.questions == ()
    assert slug("  Return window (EU) — 2024 ") == "return-window-eu-2024"


def test_folder_reads_jsonl_and_markdown_in_name_order(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "kb" / "b.jsonl", SMALL_KB[:2])
    _write(tmp_path / "kb" / "a.md", MARKDOWN)
    _write(tmp_path / "kb" / "notes.txt", "not read")
    write_jsonl(tmp_path / "kb" / "sub" / "c.jsonl", SMALL_KB[2:])  # not recursive
    kb = KnowledgeBase.load(tmp_path / "kb")
    assert kb.ids == ["returns-window", "shipping-to-the-eu", "cafe-hours", "coffee", "refund"]
    assert kb["refund"].source == f"{tmp_path / 'kb' / 'b.jsonl'}, line 2"


def test_fingerprint_follows_content_not_files(tmp_path: Path) -> None:
    one = KnowledgeBase.load(write_jsonl(tmp_path / "one.jsonl", SMALL_KB))
    split = tmp_path / "split"
    write_jsonl(split / "a.jsonl", SMALL_KB[3:])
    write_jsonl(split / "b.jsonl", SMALL_KB[:3])
    assert KnowledgeBase.load(split).fingerprint() == one.fingerprint()
    changed = [{**SMALL_KB[0], "text": "great coffee"}] + SMALL_KB[1:]
    assert KnowledgeBase.load(write_jsonl(tmp_path / "two.jsonl", changed)).fingerprint() != one.fingerprint()
    assert one.with_questions([("fast shipping?", "coffee")]).fingerprint() != one.fingerprint()


def test_questions_join_their_entries_and_round_trip_through_jsonl(tmp_path: Path) -> None:
    kb = KnowledgeBase.load(write_jsonl(tmp_path / "kb.jsonl", [{**SMALL_KB[0], "questions": ["Is it good?"]},
                                                                  *SMALL_KB[1:]]))
    more = kb.with_questions([(" Is the coffee fresh? ", "coffee"), ("Is it good?", "coffee"),
                              ("Where is my refund?", "refund")])
    assert more["coffee"].questions == ("Is it good?", "Is the coffee fresh?")  # each once, in order
    assert more["refund"].questions == ("Where is my refund?",) and more["hotel"].questions == ()
    assert kb["coffee"].questions == ("Is it good?",)  # the original is unchanged
    again = KnowledgeBase.load(_write(tmp_path / "saved.jsonl", more.to_jsonl()))
    assert [(e.id, e.title, e.text, e.key, e.questions) for e in again] == [
        (e.id, e.title, e.text, e.key, e.questions) for e in more]
    with pytest.raises(DataError, match="dialogues.jsonl: unknown knowledge-base entry 'nope'"):
        kb.with_questions([("Why?", "nope")], "dialogues.jsonl")


GOOD = '{"id": "a", "title": "A", "text": "text a"}'
BAD_JSONL = [
    (GOOD + '\n{"id": "b", "title": "B",\n', 2, "invalid JSON"),
    ('[1, 2]\n', 1, "expected an object"),
    ('{"title": "A", "text": "t"}\n', 1, "field 'id' is missing"),
    (GOOD + '\n{"id": "b", "title": "  ", "text": "t"}\n', 2, "field 'title' must be a non-empty string"),
    ('{"id": "a", "title": "A"}\n', 1, "field 'text' is missing"),
    ('{"id": 7, "title": "A", "text": "t"}\n', 1, "field 'id' must be a non-empty string"),
    ('{"id": "returns window", "title": "A", "text": "t"}\n', 1, "field 'id': 'returns window' is not a valid id"),
    ('{"id": "a", "title": "A", "text": "t", "key": ""}\n', 1, "field 'key' must be a non-empty string"),
    (GOOD + '\n{"id": "b", "title": "B", "text": "t", "questions": "Why?"}\n', 2,
     "field 'questions' must be a list of non-empty strings"),
    ('{"id": "a", "title": "A", "text": "t", "questions": ["Why?", " "]}\n', 1,
     "field 'questions' must be a list of non-empty strings"),
]


@pytest.mark.parametrize(("content", "line", "message"), BAD_JSONL)
def test_bad_jsonl_names_file_line_and_field(tmp_path: Path, content: str, line: int, message: str) -> None:
    path = _write(tmp_path / "kb.jsonl", content)
    with pytest.raises(DataError) as err:
        KnowledgeBase.load(path)
    assert f"{path}, line {line}: " in str(err.value) and message in str(err.value)


BAD_MARKDOWN = [
    ("## {#a}\ntext\n", 1, "field 'title' is empty"),
    ("## Returns {#bad id}\ntext\n", 1, "field 'id': 'bad id' is not a valid id"),
    ("## Fine\ntext\n\n## 退货政策\n七天无理由\n", 4, "field 'id': title '退货政策' has no ASCII letters"),
    ("## Returns\nKey: 30 days\n\n## Next\ntext\n", 1, "field 'text' is empty"),
    ("## Returns\ntext\nKey:\n", 3, "field 'key' is empty"),
    ("## Returns\ntext\nQuestion:  \n", 3, "field 'question' is empty"),
    ("## Returns\nKey: 30 days\ntext\nKey: 14 days\n", 4,
     "field 'key' given twice in section 'Returns' (first on line 2)"),
]


@pytest.mark.parametrize(("content", "line", "message"), BAD_MARKDOWN)
def test_bad_markdown_names_file_line_and_field(tmp_path: Path, content: str, line: int, message: str) -> None:
    path = _write(tmp_path / "kb.md", content)
    with pytest.raises(DataError) as err:
        KnowledgeBase.load(path)
    assert f"{path}, line {line}: " in str(err.value) and message in str(err.value)


def test_duplicate_ids_name_both_places(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "kb.jsonl", [SMALL_KB[0], SMALL_KB[1], SMALL_KB[0]])
    with pytest.raises(DataError) as err:
        KnowledgeBase.load(path)
    assert str(err.value) == f"{path}, line 3: field 'id': duplicate id 'coffee' (first at {path}, line 1)"
    jsonl = write_jsonl(tmp_path / "kb" / "a.jsonl", [{"id": "returns-window", "title": "R", "text": "t"}])
    md = _write(tmp_path / "kb" / "b.md", MARKDOWN)
    with pytest.raises(DataError) as err:
        KnowledgeBase.load(tmp_path / "kb")
    assert f"{md}, line 5" in str(err.value) and f"{jsonl}, line 1" in str(err.value)


def test_empty_or_unreadable_sources(tmp_path: Path) -> None:
    cases = {
        _write(tmp_path / "blank.jsonl", "\n  \n"): "no entries",
        _write(tmp_path / "preamble.md", "# Title\n\nonly a preamble\n"): "no entries",
        _write(tmp_path / "kb.csv", "id,title\n"): "unsupported format '.csv'",
        tmp_path / "missing.jsonl": "no such file or folder",
        (tmp_path / "empty_dir").resolve(): "no .jsonl or .md files",
    }
    (tmp_path / "empty_dir").mkdir()
    for path, message in cases.items():
        with pytest.raises(DataError, match=message) as err:
            KnowledgeBase.load(path)
        assert str(err.value).startswith(str(path))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"id": "a", "title": "Caf\xe9", "text": "t"}\n')
    with pytest.raises(DataError, match="line 1 is not valid UTF-8"):
        KnowledgeBase.load(latin1)


# ---- retrieval


@pytest.fixture
def small_kb(tmp_path: Path) -> KnowledgeBase:
    return KnowledgeBase.load(write_jsonl(tmp_path / "kb.jsonl", SMALL_KB))


def test_exact_text_ranks_its_entry_first(small_kb: KnowledgeBase, tiny_encoder: Path, tmp_path: Path) -> None:
    retriever = Retriever(small_kb, tiny_encoder, cache=tmp_path / "cache")
    assert retriever.query_prefix == retriever.passage_prefix == ""  # not an e5 model
    assert torch.allclose(retriever.vectors.norm(dim=1), torch.ones(len(small_kb)), atol=1e-5)
    queries = [f"{e.title}\n{e.text}" for e in small_kb.entries]
    for entry, query in zip(small_kb.entries, queries):
        best = retriever.search(query, k=1)
        assert len(best) == 1 and best[0].entry == entry and best[0].score == pytest.approx(1.0, abs=1e-5)

    hits = retriever.search("refund took too long", k=3)
    assert len(hits) == 3 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(-1 - 1e-5 <= h.score <= 1 + 1e-5 for h in hits)
    assert {h.entry.id for h in retriever.search("refund", k=10)} == set(small_kb.ids)  # k beyond the KB: all

    batched = retriever.search_many(queries + ["fast shipping"], k=2)
    assert len(batched) == len(queries) + 1
    for query, hits in zip(queries + ["fast shipping"], batched):
        alone = retriever.search(query, k=2)
        assert [h.entry.id for h in hits] == [h.entry.id for h in alone]
        assert [h.score for h in hits] == pytest.approx([h.score for h in alone], abs=1e-5)
    assert retriever.search_many([], k=2) == []
    with pytest.raises(ValueError, match="k must be at least 1"):
        retriever.search("refund", k=0)


def test_passage_vectors_are_cached_and_reused(small_kb: KnowledgeBase, tiny_encoder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = Retriever(small_kb, tiny_encoder, cache=cache)
    assert not first.from_cache and first.cache_path.parent == cache and first.cache_path.suffix == ".safetensors"
    assert [p.name for p in cache.iterdir()] == [first.cache_path.name]  # no temporary file left

    again = Retriever(small_kb, backbone=first.backbone, encoder=tiny_encoder, cache=cache)
    assert again.from_cache and again.cache_path == first.cache_path
    assert torch.equal(again.vectors, first.vectors)
    query = "refund took too long"
    assert [h.entry.id for h in again.search(query)] == [h.entry.id for h in first.search(query)]

    changed = KnowledgeBase(small_kb.entries[:-1] + [Entry("hotel", "酒店", "酒店早餐很难吃", None, "test")])
    other = Retriever(changed, backbone=first.backbone, cache=cache)
    assert not other.from_cache and other.cache_path != first.cache_path
    prefixed = Retriever(small_kb, backbone=first.backbone, passage_prefix="passage: ", cache=cache)
    assert not prefixed.from_cache and prefixed.cache_path not in (first.cache_path, other.cache_path)
    assert len(list(cache.iterdir())) == 3


def test_entry_score_averages_passage_and_best_question(small_kb: KnowledgeBase, tiny_encoder: Path,
                                                      tmp_path: Path) -> None:
    """An entry with questions scores (cosine to its passage + best cosine to its questions) / 2; one without
    scores by its passage alone; the question vectors are cached with the passages."""
    kb = small_kb.with_questions([("fast shipping", "coffee"), ("the blender broke", "coffee"),
                                  ("refund", "refund")])
    retriever = Retriever(kb, tiny_encoder, cache=tmp_path / "cache")
    assert retriever.question_vectors.shape == (3, retriever.vectors.shape[1])
    queries = ["the blender broke after a week", "refund took too long", "手机电池"]
    q = retriever._embed(queries, None)
    passage, question = q @ retriever.vectors.T, q @ retriever.question_vectors.T
    expected = passage.clone()
    ids = [e.id for e in retriever.entries]  # the columns: entries in id order
    coffee, refund = ids.index("coffee"), ids.index("refund")
    expected[:, coffee] = (passage[:, coffee] + question[:, :2].max(dim=1).values) / 2
    expected[:, refund] = (passage[:, refund] + question[:, 2]) / 2
    assert torch.allclose(retriever.scores(q), expected, atol=1e-6)
    hits = retriever.search_many(queries, k=len(kb))
    for row, query_hits in enumerate(hits):
        assert {h.entry.id: h.score for h in query_hits} == pytest.approx(
            {ids[i]: float(expected[row, i]) for i in range(len(kb))}, abs=1e-5)

    again = Retriever(kb, backbone=retriever.backbone, cache=tmp_path / "cache")
    assert again.from_cache and torch.equal(again.question_vectors, retriever.question_vectors)
    plain = Retriever(small_kb, backbone=retriever.backbone, cache=tmp_path / "cache")
    assert plain.cache_path != retriever.cache_path and plain.question_vectors.shape[0] == 0
    assert torch.allclose(plain.scores(q), passage, atol=1e-6)


def test_other_encoder_gets_its_own_cache(small_kb: KnowledgeBase, tiny_encoder: Path, other_tiny_encoder: Path,
                                          tmp_path: Path) -> None:
    first = Retriever(small_kb, tiny_encoder, cache=tmp_path)
    other = Retriever(small_kb, other_tiny_encoder, cache=tmp_path)
    assert not other.from_cache and other.cache_path != first.cache_path
    assert not torch.allclose(other.vectors, first.vectors)


def test_e5_gets_query_and_passage_prefixes(small_kb: KnowledgeBase, tiny_encoder: Path, tmp_path: Path) -> None:
    e5 = shutil.copytree(tiny_encoder, tmp_path / "e5-small-multilingual")  # named as resolve() names e5
    retriever = Retriever(small_kb, e5, cache=tmp_path / "cache")
    assert (retriever.query_prefix, retriever.passage_prefix) == ("query: ", "passage: ")
    explicit = Retriever(small_kb, backbone=retriever.backbone, query_prefix="", passage_prefix="",
                         cache=tmp_path / "cache")
    assert (explicit.query_prefix, explicit.passage_prefix) == ("", "")
    assert explicit.cache_path != retriever.cache_path


# ---- threshold


@pytest.mark.parametrize(("answerable", "unanswerable", "expected"), [
    ([0.8, 0.9], [0.2, 0.3], 0.55),  # separable: the middle of the gap between the classes
    ([0.5, 0.7, 0.9], [0.1, 0.6], 0.65),  # (0.6, 0.7] answers 2/3 and hands off 2/2: the best, 5/6
    ([0.5, 0.9], [0.1, 0.6], 0.3),  # (0.1, 0.5] and (0.6, 0.9] tie at 3/4: the wider gap wins
    ([0.375, 0.875], [0.125, 0.625], 0.75),  # same tie, equal widths (exact in binary): the higher threshold
    ([0.7, 0.7, 0.9], [0.7], 0.8),  # ties in scores: (0.7, 0.9] hands the 0.7s off, 1/3 + 1 beats 1 + 0
])
def test_threshold_maximises_balanced_accuracy(answerable: list[float], unanswerable: list[float],
                                               expected: float) -> None:
    assert choose_threshold(answerable, unanswerable) == pytest.approx(expected)


def test_threshold_when_scores_do_not_separate() -> None:
    t = choose_threshold([0.1], [0.9])  # answering all or none scores 1/2; every gap scores 0: hand off all
    assert t > 0.9 and t == pytest.approx(0.9) and math.nextafter(0.9, 0) < t
    assert choose_threshold([0.5], [0.5]) > 0.5
    for empty in ([], [0.5]), ([0.5], []):
        with pytest.raises(ValueError, match="needs scores of both"):
            choose_threshold(*empty)
