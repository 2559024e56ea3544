"""Why a classification task predicted its label: word occlusion over the adapter model.

Each word of a text is removed in turn (all its word pieces, as if it had been deleted from the
text) and the text is scored again. A word's weight is how much the predicted label's probability
drops without it: positive words support the label, negative ones speak against it. The variants
of all texts are scored together in length-grouped batches, so a short text costs one forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .baselines import CJK
from .classification import TextClassification
from .lexical import row_text
from .predictor import Inputs, as_texts

if TYPE_CHECKING:
    from transformers import BatchEncoding

    from .predictor import TaskModel


@dataclass
class _Word:
    """One occlusion unit: a word (its word pieces merged) or a single CJK token."""

    segment: int  # which text: 0, or 1 for the second text of a pair
    start: int  # character span in that text
    end: int
    positions: set[int] = field(default_factory=set)  # token positions in the encoded row


def _words(encoding: BatchEncoding, row: int, texts: list[str]) -> list[_Word]:
    """The words of one encoded row. Word pieces join as the tokenizer groups them into words, except
    that a piece with CJK characters stands alone, so Chinese is explained token by token (one
    character each for BERT-style tokenizers). Special tokens are never occluded."""
    units: list[_Word] = []
    previous: tuple[int, int, int, int] | None = None  # segment, word id, start, end of the previous token
    for position, (word_id, segment, (start, end)) in enumerate(
        zip(encoding.word_ids(row), encoding.sequence_ids(row), encoding["offset_mapping"][row])
    ):
        if word_id is None:
            continue
        text = texts[segment]
        joins = False
        if previous is not None and previous[:2] == (segment, word_id):
            before = text[previous[2] : previous[3]]
            bare = start < previous[3] or not before.strip()  # a lone "▁" piece: blank, or overlapping the next
            joins = bare or not (CJK.search(before) or CJK.search(text[start:end]))
        if joins:
            units[-1].end = max(units[-1].end, end)
        else:
            units.append(_Word(segment, start, end))
        units[-1].positions.add(position)
        previous = (segment, word_id, start, end)
    return units


def _variant_texts(texts: list[list[str]], per_text: list[list[_Word]]) -> list[str]:
    """The row texts in the order of the token-id variants: each row whole, then without each of its words."""
    out = []
    for row, units in enumerate(per_text):
        fields = [segment[row] for segment in texts]
        out.append(row_text(fields))
        for w in units:
            cut = list(fields)
            cut[w.segment] = fields[w.segment][: w.start] + fields[w.segment][w.end :]
            out.append(row_text(cut))
    return out


def explain(model: TaskModel, inputs: Inputs, top_k: int | None = 5, batch_size: int = 64) -> list[dict[str, Any]]:
    """Per text: the predicted ``label`` (the most probable one for multi-label tasks), its ``probability``,
    and ``tokens``, the ``top_k`` words (all with None) as ``{"token", "weight"}`` by weight, highest first.

    A weight is ``probability`` minus the label's probability with that word removed. Only the tokens
    the model reads (after truncation to the card's max_length) are explained.
    """
    if not isinstance(model.task, TextClassification):
        raise TypeError(f"explain covers classification tasks; '{model.card['task']}' is not one")
    texts = as_texts(inputs, model.task.schema.text)
    if not texts[0]:
        return []
    encoding = model.backbone.tokenizer(texts[0], texts[1] if len(texts) > 1 else None, truncation=True,
                                        max_length=model.max_length, return_offsets_mapping=True)
    per_text: list[list[_Word]] = []
    variants: list[list[int]] = []  # per text: the full row, then the row without each word
    for row, ids in enumerate(encoding["input_ids"]):
        units = _words(encoding, row, [segment[row] for segment in texts])
        per_text.append(units)
        variants.append(ids)
        variants += [[t for i, t in enumerate(ids) if i not in w.positions] for w in units]
    logits = model.id_logits(variants, batch_size)
    if model.lexical is not None:  # the same rows as text, each word cut out of its field, for the lexical part
        logits = model.lexical.blend(logits, _variant_texts(texts, per_text))
    probabilities = model.task.probabilities(logits)
    results, at = [], 0
    for row, units in enumerate(per_text):
        full = probabilities[at]
        label = int(full.argmax())
        without = probabilities[at + 1 : at + 1 + len(units), label].tolist()
        at += 1 + len(units)
        probability = full[label].item()
        tokens = [{"token": texts[w.segment][row][w.start : w.end].strip(), "weight": probability - p}
                  for w, p in zip(units, without)]
        tokens.sort(key=lambda t: -t["weight"])
        results.append({"label": model.task.labels[label], "probability": probability, "tokens": tokens[:top_k]})
    return results
