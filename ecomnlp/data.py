"""Rows from files through `datasets`, checked against a task's schema, to padded batches.

Errors name the file, the row (counted from 1, header not included) and the column.
"""
from __future__ import annotations

import csv
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from datasets import Dataset, Features, Value, load_dataset, load_from_disk

from .task import Task

log = logging.getLogger(__name__)

_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """Input that cannot be used; the message names file, row and column."""


def _check_utf8(path: Path) -> None:
    with path.open("rb") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}: line {line_no} is not valid UTF-8 (byte {err.start} of the line); "
                    "re-save the file as UTF-8"
                ) from None


def read_table(path: str | Path) -> Dataset:
    """A CSV/TSV/JSONL/Parquet file or a folder saved with ``Dataset.save_to_disk``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return load_from_disk(str(path))
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported format '{path.suffix}' (use {', '.join(_FORMATS)} or a saved dataset)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    options: dict[str, Any] = {}
    if kind == "csv":
        _check_utf8(path)
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=sep)
            header = next(reader, [])
            if next((r for r in reader if r), None) is None:  # blank lines read as []
                raise DataError(f"{path}: the file has no data rows (header only)")
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:  # the reader would keep one of them and drop the other's values
            raise DataError(f"{path}: the header names column(s) {twice} more than once")
        # Every column as text: type guessing would turn label 1 into 1.0 next to a missing value,
        # and texts such as "NA", "None" or "null" are texts, not missing values (empty fields stay "").
        options = {"sep": sep, "keep_default_na": False, "encoding": "utf-8-sig",  # a leading BOM is not a column name
                   "features": Features({c: Value("string") for c in header})}
    elif kind == "json":
        _check_utf8(path)
    try:
        table = load_dataset(kind, data_files=str(path), split="train", **options)
    except Exception as err:  # datasets wraps parser errors; keep the file name in front
        cause = err.__cause__ or err
        raise DataError(f"{path}: cannot be read as {kind}: {cause}") from err
    if len(table) == 0:
        raise DataError(f"{path}: the file has no data rows")
    return table


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


@dataclass
class Rows:
    """Checked rows of one split: texts per text field, raw labels, and source row numbers."""

    path: str
    texts: list[list[str]]
    labels: list[Any] | None
    row_numbers: list[int]

    def __len__(self) -> int:
        return len(self.row_numbers)

    def subset(self, index: Sequence[int]) -> Rows:
        """These rows at ``index``, in that order, keeping file and row numbers."""
        return Rows(self.path, [[t[i] for i in index] for t in self.texts],
                    [self.labels[i] for i in index] if self.labels is not None else None,
                    [self.row_numbers[i] for i in index])


def load_rows(
    path: str | Path,
    task: Task,
    columns: dict[str, str] | None = None,
    on_bad_row: str = "skip",
    with_labels: bool = True,
) -> Rows:
    """Read a file and check it against the task's schema.

    ``columns`` maps schema fields to file columns. Rows with empty or missing text or label
    are skipped with a logged count (``on_bad_row="skip"``) or raise (``"fail"``).
    """
    columns = columns or {}
    table = read_table(path)
    schema = task.schema
    fields = list(schema.text) + ([schema.label] if with_labels and schema.label else [])
    source = {f: columns.get(f, f) for f in fields}
    missing = [f"'{c}' (for {f})" for f, c in source.items() if c not in table.column_names]
    if missing:
        raise DataError(
            f"{path}: missing column {', '.join(missing)}; the file has columns {table.column_names}. "
            "Map columns in the config, e.g. data.columns: {text: review, label: cat}"
        )
    values = {f: table[c][:] for f, c in source.items()}  # plain lists: indexing a Column row by row is ~100x slower
    keep: list[int] = []
    bad: list[str] = []
    for i in range(len(table)):
        nested = next((f for f in fields if isinstance(values[f][i], dict)
                       or (f != schema.label and isinstance(values[f][i], list))), None)
        if nested is not None:  # str() would make a text or label of its repr
            raise DataError(f"{path}: row {i + 1}, column '{source[nested]}': {values[nested][i]!r} is not a "
                            f"{'label' if nested == schema.label else 'text'}")
        problem = next((f for f in fields if _is_blank(values[f][i])), None)
        if problem is None:
            keep.append(i)
            continue
        where = f"{path}: row {i + 1}, column '{source[problem]}': empty or missing value"
        if on_bad_row == "fail":
            raise DataError(where + " (set data.on_bad_row: skip to skip such rows)")
        bad.append(where)
    if bad:
        log.warning("skipped %d row(s) with empty text or label, e.g. %s", len(bad), "; ".join(bad[:3]))
    if not keep:
        raise DataError(f"{path}: no usable rows ({len(bad)} skipped)")
    return Rows(
        path=str(path),
        texts=[[str(values[f][i]) for i in keep] for f in schema.text],
        labels=[values[schema.label][i] for i in keep] if with_labels and schema.label else None,
        row_numbers=[i + 1 for i in keep],
    )


def encode_targets(rows: Rows, task: Task, column: str) -> list[Any]:
    """The task's target for every row; an unusable label names file, row and column."""
    targets = []
    for label, row in zip(rows.labels or [], rows.row_numbers):
        try:
            targets.append(task.encode_target(label))
        except ValueError as err:
            raise DataError(f"{rows.path}: row {row}, column '{column}': {err}") from None
    return targets


def tokenize(tokenizer: Any, texts: list[list[str]], max_length: int | None) -> list[list[int]]:
    """Token ids per row, without padding; a second text field is encoded as a pair."""
    pair = texts[1] if len(texts) > 1 else None
    truncation = max_length is not None
    return tokenizer(texts[0], pair, truncation=truncation, max_length=max_length)["input_ids"]


def choose_max_length(lengths: Sequence[int], percentile: float, model_limit: int) -> int:
    """The ``percentile`` of token lengths, rounded up to a multiple of 8, within the model's limit."""
    ordered = sorted(lengths)
    k = min(len(ordered) - 1, max(0, math.ceil(percentile / 100 * len(ordered)) - 1))
    return min(model_limit, max(8, -(-ordered[k] // 8) * 8))


def collate(ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest row of this batch, not to the model's maximum."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


class LengthGroupedBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of rows of similar length, in random order, split across ``num_replicas``.

    Rows are shuffled, cut into chunks of ``group`` batches, sorted by length inside each
    chunk, and batched, so little padding is wasted while the order stays random.
    With ``shuffle=False`` (evaluation) batches simply follow sorted length.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
        num_replicas: int = 1, rank: int = 0, group: int = 50,
    ) -> None:
        self.lengths, self.batch_size, self.shuffle, self.seed = list(lengths), batch_size, shuffle, seed
        self.num_replicas, self.rank, self.group, self.epoch = num_replicas, rank, group, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        if not self.shuffle:
            order.sort(key=lambda i: -self.lengths[i])
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        rng = random.Random(self.seed + self.epoch)
        rng.shuffle(order)
        chunk = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start : start + chunk], key=lambda i: self.lengths[i])
            batches += [part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        per_replica = len(self)
        # Equal count per rank (else DDP hangs), repeating batches as often as needed.
        batches = [batches[i % len(batches)] for i in range(max(len(batches), per_replica * self.num_replicas))]
        return iter(batches[self.rank :: self.num_replicas][:per_replica])

    def __len__(self) -> int:
        return -(-(-(-len(self.lengths) // self.batch_size)) // self.num_replicas)
