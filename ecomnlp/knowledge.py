"""A store knowledge base (FAQ / policy entries) and retrieval over it with the shared encoder.

A knowledge base is read from a ``.jsonl`` file, a ``.md`` file, or a folder of both (non-recursive,
files in name order):

- JSONL: one ``{"id": ..., "title": ..., "text": ..., "key": ..., "questions": [...]}`` object per
  non-blank line; ``key`` (the phrase a correct answer must state) and ``questions`` (customer questions
  the entry answers) are optional, other fields are ignored.
- Markdown: one entry per ``## Title {#id}`` section (without ``{#id}`` the id is the title's slug);
  a body line ``Key: ...`` sets the key, each ``Question: ...`` line adds a question; the rest of the
  body is the text. Text before the first ``##`` heading is ignored; ``###`` and deeper headings are
  body text.

``Retriever`` embeds each entry and its questions with the base encoder (no adapter), caches the
vectors on disk and ranks entries by cosine similarity to a question: to the passage, averaged with
the best of the entry's questions where it has some; ``choose_threshold`` picks the score under
which a question is handed off to a person.
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from .artifact import _umask
from .data import DataError, _check_utf8, tokenize

if TYPE_CHECKING:
    from .backbone import Backbone, Pooling

log = logging.getLogger(__name__)

ID = re.compile(r"[A-Za-z0-9_.-]+")
E5 = "e5-small-multilingual"  # trained with "query: " / "passage: " prefixes
SUFFIXES = (".jsonl", ".md")
# "## Title" or "## Title {#id}"; "##Title" is not a heading (CommonMark), "###" is a deeper one
_HEADING = re.compile(r"^##(?:[ \t]+(?P<title>.*?))?(?:[ \t]*\{#(?P<id>[^}]*)\})?[ \t]*$")
_FIELD_LINE = re.compile(r"^(?P<field>key|question)[ \t]*:(?P<value>.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Entry:
    """One knowledge-base entry; ``source`` is where it was read ("file, line N"); ``questions``: customer
    questions it answers (e.g. from past dialogues), extra ways for a question to find it."""

    id: str
    title: str
    text: str
    key: str | None
    source: str
    questions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hit:
    """A retrieved entry and its cosine similarity to the question."""

    entry: Entry
    score: float


class KnowledgeBase:
    """Entries with unique ids, in the order read; ``kb[id]`` is one entry."""

    def __init__(self, entries: Sequence[Entry], origin: str | Path = "knowledge base") -> None:
        """Raises DataError for no entries or a duplicate id (naming both places)."""
        if not entries:
            raise DataError(f"{origin}: no entries")
        self.entries: list[Entry] = list(entries)
        self._by_id: dict[str, Entry] = {}
        for entry in self.entries:
            first = self._by_id.setdefault(entry.id, entry)
            if first is not entry:
                raise DataError(f"{entry.source}: field 'id': duplicate id '{entry.id}' (first at {first.source})")

    @classmethod
    def load(cls, path: str | Path) -> KnowledgeBase:
        """Entries of a ``.jsonl`` or ``.md`` file, or of every such file in a folder (name order)."""
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
            if not files:
                raise DataError(f"{path}: no .jsonl or .md files in this folder")
        elif not path.exists():
            raise DataError(f"{path}: no such file or folder")
        elif path.suffix not in SUFFIXES:
            raise DataError(f"{path}: unsupported format '{path.suffix}' (use .jsonl, .md or a folder of them)")
        else:
            files = [path]
        entries = []
        for file in files:
            _check_utf8(file)
            entries += _read_jsonl(file) if file.suffix == ".jsonl" else _read_markdown(file)
        return cls(entries, path)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, id: str) -> Entry:
        if id not in self._by_id:
            raise KeyError(f"no entry '{id}' in the knowledge base")
        return self._by_id[id]

    def __contains__(self, id: object) -> bool:
        return id in self._by_id

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def fingerprint(self) -> str:
        """sha256 of every entry's id, title, text, key and questions, in id order (files and line numbers
        do not count)."""
        content = [[e.id, e.title, e.text, e.key, list(e.questions)] for e in sorted(self.entries, key=lambda e: e.id)]
        return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode()).hexdigest()

    def with_questions(self, pairs: Sequence[tuple[str, str]], origin: str = "questions") -> KnowledgeBase:
        """A copy whose entries also hold the (question, entry id) ``pairs``' questions (each once, in order).
        Raises DataError for an id not in the knowledge base."""
        added: dict[str, list[str]] = {}
        for question, id in pairs:
            if id not in self:
                raise DataError(f"{origin}: unknown knowledge-base entry '{id}'")
            added.setdefault(id, []).append(question.strip())
        entries = [dataclasses.replace(e, questions=tuple(dict.fromkeys([*e.questions, *added.get(e.id, [])])))
                   for e in self.entries]
        return KnowledgeBase(entries, origin)

    def to_jsonl(self) -> str:
        """The entries as JSONL, in order (``KnowledgeBase.load`` reads it back)."""
        return "".join(json.dumps({"id": e.id, "title": e.title, "text": e.text, "key": e.key,
                                   **({"questions": list(e.questions)} if e.questions else {})},
                                  ensure_ascii=False) + "\n" for e in self.entries)


def _text_field(record: dict[str, Any], name: str, where: str) -> str:
    """A required non-empty string field, stripped."""
    value = record.get(name)
    if name not in record:
        raise DataError(f"{where}: field '{name}' is missing")
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{name}' must be a non-empty string, got {value!r}")
    return value.strip()


def _check_id(id: str, where: str) -> str:
    if not ID.fullmatch(id):
        raise DataError(f"{where}: field 'id': '{id}' is not a valid id (letters, digits, '_', '.', '-')")
    return id


def _read_jsonl(path: Path) -> list[Entry]:
    entries = []
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: invalid JSON: {err.msg} (column {err.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f'{where}: expected an object {{"id": ..., "title": ..., "text": ...}}')
            id = _check_id(_text_field(record, "id", where), where)
            title, text = _text_field(record, "title", where), _text_field(record, "text", where)
            key = None if record.get("key") is None else _text_field(record, "key", where)
            entries.append(Entry(id, title, text, key, where, _questions(record.get("questions"), where)))
    return entries


def _questions(value: Any, where: str) -> tuple[str, ...]:
    """The optional ``questions`` field: a list of non-empty strings, stripped."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(q, str) and q.strip() for q in value):
        raise DataError(f"{where}: field 'questions' must be a list of non-empty strings, got {value!r}")
    return tuple(q.strip() for q in value)


def slug(title: str) -> str:
    """``"Return window (EU)"`` -> ``"return-window-eu"``: ASCII letters and digits joined by '-'."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")


def _read_markdown(path: Path) -> list[Entry]:
    sections: list[tuple[int, re.Match[str], list[tuple[int, str]]]] = []  # heading line, heading, body lines
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        heading = _HEADING.match(line)
        if heading:
            sections.append((number, heading, []))
        elif sections:
            sections[-1][2].append((number, line))
    return [_markdown_entry(path, *section) for section in sections]


def _markdown_entry(path: Path, number: int, heading: re.Match[str], body: list[tuple[int, str]]) -> Entry:
    where = f"{path}, line {number}"
    title = (heading["title"] or "").strip()
    if not title:
        raise DataError(f"{where}: field 'title' is empty in heading {heading.group()!r}")
    if heading["id"] is not None:
        id = _check_id(heading["id"].strip(), where)
    else:
        id = slug(title)
        if not id:
            raise DataError(f"{where}: field 'id': title '{title}' has no ASCII letters or digits to make an id "
                            "from; write the heading as '## Title {#some-id}'")
    key, key_line, text, questions = None, 0, [], []
    for line_number, line in body:
        match = _FIELD_LINE.match(line.strip())
        if match is None:
            text.append(line)
            continue
        field, value = match["field"].lower(), match["value"].strip()
        if not value:
            raise DataError(f"{path}, line {line_number}: field '{field}' is empty in section '{title}'")
        if field == "question":
            questions.append(value)
            continue
        if key is not None:
            raise DataError(f"{path}, line {line_number}: field 'key' given twice in section '{title}' "
                            f"(first on line {key_line})")
        key, key_line = value, line_number
    body_text = "\n".join(text).strip()
    if not body_text:
        raise DataError(f"{where}: field 'text' is empty: section '{title}' has no body")
    return Entry(id, title, body_text, key, where, tuple(questions))


class Retriever:
    """Ranks knowledge-base entries by cosine similarity to a question, with the base encoder alone.

    Passage vectors are cached under ``cache`` (default ``cache_dir()/"kb"``) in a safetensors file named
    after the KB, the encoder's weights, the prefixes, the pooling and the max length; a matching file is
    loaded instead of re-embedding. ``entries`` are the KB's entries in id order: row i of ``vectors``.
    """

    def __init__(
        self,
        kb: KnowledgeBase,
        encoder: str | Path = E5,
        backbone: Backbone | None = None,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        pooling: Pooling = "mean",
        max_length: int = 256,
        cache: Path | None = None,
        batch_size: int = 64,
        adapter: str | None = None,
    ) -> None:
        """Load ``encoder`` (a model name or HF folder) unless a loaded ``backbone`` is shared.
        ``adapter`` names a LoRA adapter of the backbone that embeds the questions (default: the base
        alone); passages are always embedded by the base, so their cached vectors do not depend on it.

        Prefixes default to "query: " / "passage: " for e5-small-multilingual (the encoder's folder has
        that name, as ``resolve`` makes it) and to "" otherwise.
        """
        from safetensors.torch import load_file

        from .artifact import base_checksum
        from .backbone import Backbone
        from .models import cache_dir, resolve

        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.kb = kb
        self.backbone = backbone if backbone is not None else Backbone(resolve(encoder)).eval()
        e5 = self.backbone.base_dir.name == E5
        self.query_prefix = query_prefix if query_prefix is not None else "query: " if e5 else ""
        self.passage_prefix = passage_prefix if passage_prefix is not None else "passage: " if e5 else ""
        self.pooling: Pooling = pooling
        self.max_length = min(max_length, self.backbone.max_positions)
        self.batch_size, self.adapter = batch_size, adapter
        self.entries = sorted(kb.entries, key=lambda e: e.id)
        settings = {"kb": kb.fingerprint(), "base": base_checksum(self.backbone.base_dir),
                    "query_prefix": self.query_prefix, "passage_prefix": self.passage_prefix,
                    "pooling": pooling, "max_length": self.max_length}
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        self.cache_path = Path(cache if cache is not None else cache_dir() / "kb") / f"{key}.safetensors"
        # row j of question_vectors is a question of entry question_owner[j]
        self.question_owner = torch.tensor([i for i, e in enumerate(self.entries) for _ in e.questions], dtype=torch.long)
        self.from_cache = self.cache_path.exists()
        if self.from_cache:
            cached = load_file(str(self.cache_path))
            self.vectors, self.question_vectors = cached["vectors"], cached["question_vectors"]
            log.info("knowledge base vectors loaded from %s", self.cache_path)
        else:
            log.info("embedding %d knowledge-base entries and %d questions with %s", len(self.entries),
                     len(self.question_owner), self.backbone.base_dir)
            self.vectors = self._embed([f"{self.passage_prefix}{e.title}\n{e.text}" for e in self.entries], None)
            self.question_vectors = self._embed([self.query_prefix + q for e in self.entries for q in e.questions], None)
            _save_vectors(self.cache_path, {"vectors": self.vectors, "question_vectors": self.question_vectors},
                          {"ids": json.dumps([e.id for e in self.entries]), **{k: str(v) for k, v in settings.items()}})

    def _embed(self, texts: list[str], adapter: str | None) -> torch.Tensor:
        """L2-normalised encoder vectors of ``texts`` (through ``adapter``, or the base alone), in order."""
        from .predictor import embed

        if not texts:
            return torch.zeros(0, self.backbone.hidden_size)
        ids = tokenize(self.backbone.tokenizer, [texts], self.max_length)
        return torch.nn.functional.normalize(embed(self.backbone, adapter, ids, self.batch_size, self.pooling), dim=-1)

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """Similarity of each query vector (a row) to each entry (a column, in ``entries`` order): cosine to
        the passage, averaged with the best cosine to the entry's questions where it has some."""
        passage = queries @ self.vectors.T
        if not len(self.question_owner):
            return passage
        owner = self.question_owner.expand(len(queries), -1)
        best = torch.full_like(passage, -math.inf).scatter_reduce(1, owner, queries @ self.question_vectors.T, "amax")
        return torch.where(best.isfinite(), (passage + best) / 2, passage)

    def search(self, query: str, k: int = 3) -> list[Hit]:
        """The ``k`` entries most similar to ``query``, best first."""
        return self.search_many([query], k)[0]

    def search_many(self, queries: Sequence[str], k: int = 3) -> list[list[Hit]]:
        """``search`` for each query, embedded in batches."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not queries:
            return []
        scores = self.scores(self._embed([self.query_prefix + q for q in queries], self.adapter))
        top = scores.topk(min(k, len(self.entries)), dim=1)
        return [[Hit(self.entries[i], s) for s, i in zip(values, indices)]
                for values, indices in zip(top.values.tolist(), top.indices.tolist())]


def _save_vectors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` as safetensors next to ``path`` and rename it into place."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        save_file({name: t.contiguous() for name, t in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp files are private
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def choose_threshold(answerable: Sequence[float], unanswerable: Sequence[float]) -> float:
    """The top-1 score threshold with the best balanced accuracy on validation questions.

    A question whose top score is >= the threshold is answered, else handed off. Balanced accuracy
    is the mean of the answered share of ``answerable`` and the handed-off share of ``unanswerable``.
    It only changes at observed scores, so the candidates are the midpoints of the gaps between
    consecutive distinct scores, plus the lowest score (answer all) and just above the highest
    (hand off all). Ties go to the widest gap, then to the higher threshold (hand off when unsure).
    """
    if not answerable or not unanswerable:
        raise ValueError("choose_threshold needs scores of both answerable and unanswerable questions")
    yes, no = sorted(map(float, answerable)), sorted(map(float, unanswerable))
    values = sorted(set(yes) | set(no))
    candidates = [(values[0], 0.0), (math.nextafter(values[-1], math.inf), 0.0)]
    candidates += [((low + high) / 2, high - low) for low, high in zip(values, values[1:])]

    def merit(candidate: tuple[float, float]) -> tuple[int, float, float]:
        t, width = candidate
        answered = len(yes) - bisect.bisect_left(yes, t)
        handed_off = bisect.bisect_left(no, t)
        return answered * len(no) + handed_off * len(yes), width, t  # balanced accuracy x 2|yes||no|, exactly

    return max(candidates, key=merit)[0]
