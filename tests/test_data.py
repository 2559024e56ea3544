"""Reading files, checking rows against a task's schema, and batching."""
from __future__ import annotations

import logging
import random
import statistics
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import write_csv, write_jsonl
from ecomnlp.data import (DataError, LengthGroupedBatches, choose_max_length, collate, encode_targets, load_rows,
                          read_table)
from ecomnlp.task import build_task

# Commas, quotes, Chinese, and texts pandas would take for missing values if it guessed ("NA", "None").
ROWS = [
    {"review": "great coffee, fast shipping", "label": "1"},
    {"review": 'he said "stale"', "label": "0"},
    {"review": "手机电池很耐用，物流很快", "label": "1"},
    {"review": "NA", "label": "0"},
    {"review": "None", "label": "1"},
]


def _write(fmt: str, folder: Path) -> Path:
    header = ["review", "label"]
    values = [[r[c] for c in header] for r in ROWS]
    if fmt == "csv":
        return write_csv(folder / "t.csv", header, values)
    if fmt == "csv-bom":  # as Excel saves it
        return write_csv(folder / "t.csv", header, values, encoding="utf-8-sig")
    if fmt == "tsv":
        return write_csv(folder / "t.tsv", header, values, delimiter="\t")
    if fmt == "jsonl":
        return write_jsonl(folder / "t.jsonl", ROWS)
    if fmt == "parquet":
        pd.DataFrame(ROWS).to_parquet(folder / "t.parquet")
        return folder / "t.parquet"
    if fmt == "saved":
        from datasets import Dataset

        Dataset.from_list(ROWS).save_to_disk(str(folder / "saved"))
        return folder / "saved"
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["csv", "csv-bom", "tsv", "jsonl", "parquet", "saved"])
def test_read_table_formats_give_same_rows(fmt: str, tmp_path: Path) -> None:
    table = read_table(_write(fmt, tmp_path))
    assert sorted(table.column_names) == ["label", "review"]
    assert [{"review": r["review"], "label": r["label"]} for r in table] == ROWS


def test_literal_na_texts_are_kept(tmp_path: Path) -> None:
    rows = load_rows(_write("csv", tmp_path), build_task("review_sentiment"), {"text": "review"}, on_bad_row="fail")
    assert rows.texts == [[r["review"] for r in ROWS]]
    assert rows.row_numbers == [1, 2, 3, 4, 5]


def test_missing_column_lists_available_columns(csv_writer) -> None:
    path = csv_writer("t.csv", ["title", "stars"], [["a", "1"], ["b", "2"]])
    with pytest.raises(DataError) as err:
        load_rows(path, build_task("review_sentiment"), {"text": "review"})
    message = str(err.value)
    assert str(path) in message
    assert "'review' (for text)" in message and "'label' (for label)" in message
    assert "title" in message and "stars" in message


def test_column_mapping(csv_writer) -> None:
    path = csv_writer("t.csv", ["cat", "body", "extra"], [["books", "书的内容很好", "x"], ["hotels", "酒店早餐很难吃", "y"]])
    rows = load_rows(path, build_task("product_classification"), {"text": "body", "label": "cat"})
    assert rows.texts == [["书的内容很好", "酒店早餐很难吃"]]
    assert rows.labels == ["books", "hotels"]
    assert rows.path == str(path)


@pytest.mark.parametrize("bad", ["", "   ", "\t"])
def test_empty_text_fails_naming_row_and_column(csv_writer, bad: str) -> None:
    path = csv_writer("t.csv", ["review", "label"], [["good", "1"], ["bad", "0"], [bad, "1"], ["ok", "0"]])
    with pytest.raises(DataError) as err:
        load_rows(path, build_task("review_sentiment"), {"text": "review"}, on_bad_row="fail")
    message = str(err.value)
    assert str(path) in message and "row 3" in message and "column 'review'" in message


def test_empty_text_skipped_exactly_with_count(csv_writer, caplog: pytest.LogCaptureFixture) -> None:
    path = csv_writer("t.csv", ["review", "label"], [["good", "1"], ["bad", "0"], ["", "1"], ["ok", "0"]])
    with caplog.at_level(logging.WARNING, logger="ecomnlp.data"):
        rows = load_rows(path, build_task("review_sentiment"), {"text": "review"}, on_bad_row="skip")
    assert rows.texts == [["good", "bad", "ok"]]
    assert rows.labels == ["1", "0", "0"]
    assert rows.row_numbers == [1, 2, 4]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "skipped 1 row(s)" in skipped[0] and "row 3" in skipped[0]


@pytest.mark.parametrize("fmt", ["csv-missing-field", "jsonl-null", "jsonl-absent", "parquet-none", "parquet-nan"])
def test_missing_text_value_fails_naming_row_and_column(fmt: str, tmp_path: Path) -> None:
    if fmt == "csv-missing-field":
        path = tmp_path / "t.csv"
        path.write_text("review,label\ngood,1\n,0\nok,1\n", encoding="utf-8")
    elif fmt == "jsonl-null":
        path = write_jsonl(tmp_path / "t.jsonl", [{"review": "good", "label": 1}, {"review": None, "label": 0},
                                                  {"review": "ok", "label": 1}])
    elif fmt == "jsonl-absent":
        path = write_jsonl(tmp_path / "t.jsonl", [{"review": "good", "label": 1}, {"label": 0},
                                                  {"review": "ok", "label": 1}])
    else:
        path = tmp_path / "t.parquet"
        missing = None if fmt == "parquet-none" else float("nan")
        pd.DataFrame({"review": ["good", missing, "ok"], "label": ["1", "0", "1"]}).to_parquet(path)
    task = build_task("review_sentiment")
    with pytest.raises(DataError, match=r"row 2, column 'review'") as err:
        load_rows(path, task, {"text": "review"}, on_bad_row="fail")
    assert str(path) in str(err.value)
    assert load_rows(path, task, {"text": "review"}, on_bad_row="skip").row_numbers == [1, 3]


def test_label_unseen_in_train_names_file_row_column(csv_writer) -> None:
    task = build_task("product_classification")
    train = load_rows(csv_writer("train.csv", ["text", "cat"], [["a", "books"], ["b", "phones"]]), task,
                      {"label": "cat"})
    task.fit(train.labels)
    assert encode_targets(train, task, "cat") == [0, 1]
    valid_path = csv_writer("valid.csv", ["text", "cat"], [["a", "books"], ["c", "fruit"], ["d", "phones"]])
    valid = load_rows(valid_path, task, {"label": "cat"})
    with pytest.raises(DataError) as err:
        encode_targets(valid, task, "cat")
    message = str(err.value)
    assert str(valid_path) in message and "row 2" in message and "column 'cat'" in message
    assert "'fruit'" in message and "not seen in training" in message


def test_unseen_label_row_number_counts_skipped_rows(csv_writer) -> None:
    """Row numbers in errors stay those of the file even after earlier rows were skipped."""
    task = build_task("product_classification")
    task.fit(["books", "phones"])
    path = csv_writer("valid.csv", ["text", "label"], [["", "books"], ["a", "books"], ["b", "fruit"]])
    rows = load_rows(path, task)
    with pytest.raises(DataError, match=r"row 3, column 'label'"):
        encode_targets(rows, task, "label")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_non_utf8_file_names_the_line(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    if suffix == ".jsonl":
        text = '{"text": "ok", "label": "1"}\n{"text": "fine", "label": "0"}\n{"text": "café", "label": "1"}\n'
    else:
        sep = "\t" if suffix == ".tsv" else ","
        text = f"text{sep}label\nok{sep}1\ncafé{sep}0\n"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError) as err:
        read_table(path)
    message = str(err.value)
    line = 3
    assert str(path) in message and f"line {line}" in message and "UTF-8" in message


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("empty.csv", b"", "the file is empty"),
        ("empty.jsonl", b"", "the file is empty"),
        ("header_only.csv", b"review,label\n", "no data rows"),
        ("header_only_no_newline.csv", b"review,label", "no data rows"),
        ("header_then_blank.csv", b"review,label\n\n\n", "no data rows"),
        ("header_only.tsv", b"review\tlabel\n", "no data rows"),
    ],
)
def test_empty_and_header_only_files(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_table(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "absent.csv")
    (tmp_path / "t.xlsx").write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported format '.xlsx'"):
        read_table(tmp_path / "t.xlsx")


def test_all_rows_bad_is_an_error(csv_writer) -> None:
    path = csv_writer("t.csv", ["text", "label"], [["", "1"], ["  ", "0"]])
    with pytest.raises(DataError, match=r"no usable rows \(2 skipped\)"):
        load_rows(path, build_task("review_sentiment"))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_int_labels_stay_integers_as_text_next_to_missing_label(fmt: str, tmp_path: Path) -> None:
    if fmt == "csv":
        path = tmp_path / "t.csv"
        path.write_text("text,stars\na,1\nb,\nc,10\nd,2\n", encoding="utf-8")
    else:
        path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "stars": 1}, {"text": "b", "stars": None},
                                                  {"text": "c", "stars": 10}, {"text": "d", "stars": 2}])
    task = build_task("review_sentiment", {"mode": "stars"})
    rows = load_rows(path, task, {"label": "stars"})
    assert rows.row_numbers == [1, 3, 4]
    task.fit(rows.labels)
    assert task.labels == ["1", "2", "10"]
    assert encode_targets(rows, task, "stars") == [0, 2, 1]


@pytest.mark.parametrize(
    "lengths, percentile, limit, expected",
    [
        (list(range(1, 101)), 98.0, 512, 104),  # 98th of 1..100 is 98 -> next multiple of 8
        (list(range(1, 101)), 100.0, 512, 104),  # the max, 100 -> 104
        (list(range(1, 101)), 50.0, 512, 56),
        ([3, 4, 5], 98.0, 512, 8),  # never below 8
        ([16, 16, 16], 98.0, 512, 16),  # exact multiple kept
        ([17], 98.0, 512, 24),
        ([1000] * 10, 98.0, 512, 512),  # within the model's limit
        ([130], 98.0, 128, 128),  # rounding up never passes the limit
        ([10] * 99 + [500], 98.0, 512, 16),  # one outlier does not set the length
        ([10] * 50 + [500] * 50, 0.0, 512, 16),  # 0th percentile is the minimum
        ([40, 9, 33, 12], 100.0, 512, 40),  # unsorted input
    ],
)
def test_choose_max_length(lengths: list[int], percentile: float, limit: int, expected: int) -> None:
    assert choose_max_length(lengths, percentile, limit) == expected


def test_collate_pads_to_batch_max_only() -> None:
    ids = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    batch = collate(ids, pad_id=0)
    assert batch["input_ids"].shape == (3, 5) and batch["attention_mask"].shape == (3, 5)
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [13, 0, 0, 0, 0]]
    assert batch["attention_mask"].sum(1).tolist() == [3, 5, 1]
    assert collate([[1, 2], [3, 4]], pad_id=99)["input_ids"].shape == (2, 2)  # no padding at all
    assert collate([[1]], pad_id=7)["input_ids"].tolist() == [[1]]
    assert collate([[1], [2, 3]], pad_id=7)["input_ids"].tolist() == [[1, 7], [2, 3]]


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 300) for _ in range(n)]


@pytest.mark.parametrize("n, batch_size", [(1000, 16), (37, 8), (5, 16), (64, 8)])
def test_length_grouped_batches_cover_every_index_once(n: int, batch_size: int) -> None:
    sampler = LengthGroupedBatches(_lengths(n), batch_size, shuffle=True, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-n // batch_size)
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(n))


def test_length_grouped_batches_have_low_length_spread() -> None:
    lengths = _lengths(2000)
    batches = list(LengthGroupedBatches(lengths, 16, shuffle=True, seed=0))
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    random_batches = [order[i : i + 16] for i in range(0, len(order), 16)]

    def spread(bs: list[list[int]]) -> float:
        return statistics.mean(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in bs)

    assert spread(batches) < 0.1 * spread(random_batches)
    # ...and the batches are not simply in length order (training sees them shuffled).
    firsts = [lengths[b[0]] for b in batches]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)


def test_length_grouped_batches_epochs_differ_and_are_reproducible() -> None:
    lengths = _lengths(500)
    sampler = LengthGroupedBatches(lengths, 16, shuffle=True, seed=1)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch0 != epoch1
    assert sorted(map(tuple, epoch0)) != sorted(map(tuple, epoch1))  # different groupings, not just order
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    assert list(LengthGroupedBatches(lengths, 16, shuffle=True, seed=1)) == epoch0


def test_length_grouped_batches_without_shuffle_follow_length() -> None:
    lengths = [5, 50, 20, 40, 10]
    batches = list(LengthGroupedBatches(lengths, 2, shuffle=False))
    assert batches == [[1, 3], [2, 4], [0]]


@pytest.mark.parametrize(
    "n, batch_size, replicas",
    [(1000, 16, 2), (992, 16, 2), (37, 8, 2), (5, 16, 2), (100, 16, 3), (5, 16, 4), (20, 8, 8)],
)
@pytest.mark.parametrize("shuffle", [True, False])
def test_length_grouped_batches_split_across_replicas(n: int, batch_size: int, replicas: int, shuffle: bool) -> None:
    """Every rank gets the same number of batches (else DDP hangs) and together they cover all rows."""
    lengths = _lengths(n)
    per_rank = []
    for rank in range(replicas):
        sampler = LengthGroupedBatches(lengths, batch_size, shuffle=shuffle, seed=5, num_replicas=replicas, rank=rank)
        sampler.set_epoch(2)
        per_rank.append(list(sampler))
        assert len(per_rank[-1]) == len(sampler)
    assert len({len(b) for b in per_rank}) == 1
    assert all(len(b) >= 1 for b in per_rank)
    seen = [i for batches in per_rank for b in batches for i in b]
    assert set(seen) == set(range(n))
    assert len(seen) - n < replicas * batch_size  # padding repeats at most one batch per rank
    if replicas == 2 and -(-n // batch_size) % 2 == 0:
        assert sorted(seen) == list(range(n))  # nothing repeated when batches split evenly


def test_real_online_shopping_train_skips_only_the_empty_review(shared_data: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = shared_data / "online_shopping_10_cats" / "train.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    empty = frame.index[frame["review"].str.strip() == ""].tolist()
    assert len(empty) == 1  # the README documents one empty review
    with caplog.at_level(logging.WARNING, logger="ecomnlp.data"):
        rows = load_rows(path, build_task("product_classification"), {"text": "review", "label": "cat"},
                         on_bad_row="skip")
    assert len(rows) == len(frame) - 1
    assert rows.row_numbers == [i + 1 for i in range(len(frame)) if i not in empty]
    assert "skipped 1 row(s)" in caplog.text and f"row {empty[0] + 1}," in caplog.text
    kept = frame.drop(index=empty)
    assert rows.labels == kept["cat"].tolist()
    assert rows.texts[0] == kept["review"].tolist()  # duplicates kept, text unchanged
    assert pd.Series(rows.texts[0]).duplicated().sum() == kept["review"].duplicated().sum() > 0
    with pytest.raises(DataError, match=rf"row {empty[0] + 1}, column 'review'"):
        load_rows(path, build_task("product_classification"), {"text": "review", "label": "cat"}, on_bad_row="fail")


def test_csv_with_byte_order_mark_keeps_its_first_column_name(tmp_path: Path) -> None:
    from ecomnlp.data import read_table

    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffreview,label\ngood tea,1\n".encode("utf-8"))
    table = read_table(path)
    assert table.column_names == ["review", "label"] and table["review"][:] == ["good tea"]


def test_nested_values_are_refused_and_label_lists_are_multi_labels(tmp_path: Path) -> None:
    """JSONL can hold lists and objects: str() of them would train on their repr."""
    from ecomnlp.classification import label_text

    path = write_jsonl(tmp_path / "nested.jsonl", [{"text": "a", "label": "x"}, {"text": {"t": "b"}, "label": "y"}])
    with pytest.raises(DataError, match=r"nested.jsonl: row 2, column 'text': \{'t': 'b'\} is not a text"):
        load_rows(path, build_task("review_sentiment", {}))
    path = write_jsonl(tmp_path / "lists.jsonl", [{"text": "a", "label": ["kitchen", "gifts"]},
                                                  {"text": "b", "label": ["toys"]}, {"text": "c", "label": "toys|gifts"}])
    task = build_task("product_classification", {"multi_label": True})
    rows = load_rows(path, task)
    task.fit(rows.labels)
    assert task.labels == ["gifts", "kitchen", "toys"]
    assert [task.encode_target(v) for v in rows.labels] == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match=r"a label is one value, got \['toys'\] \(a list of labels needs multi_label"):
        label_text(["toys"])


def test_a_column_named_twice_is_refused(csv_writer) -> None:
    path = csv_writer("twice.csv", ["text", "label", "text"], [("a", "1", "c"), ("b", "0", "d")])
    with pytest.raises(DataError, match=r"twice.csv: the header names column\(s\) \['text'\] more than once"):
        load_rows(path, build_task("review_sentiment", {}))
