"""Feature pipeline: each transform against hand-computed cases, fit/transform separation, JSON round trip,
stable crosses, templates, and errors that name the column and row."""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ecomnlp.data import DataError
from ecomnlp.features import FeaturePipeline

NAN = float("nan")
E1 = math.e - 1  # log1p(E1) == 1


def _fit(spec: dict, train: Any) -> FeaturePipeline:
    return FeaturePipeline(spec).fit(train)


# id, options, train, test, numeric_names, expected rows (value[, indicator])
NUMERIC_CASES = [
    ("defaults: median fill, indicator, standard", {}, [1, 2, None, 5], [1, None, 5, 8],
     # filled train [1, 2, 2, 5]: mean 2.5, population std 1.5
     ["x", "x_missing"], [[-1, 0], [-1 / 3, 1], [5 / 3, 0], [11 / 3, 0]]),
    ("no missing in train: no indicator", {"scale": "none"}, [1, 2, 3], [None, 4],
     ["x"], [[2], [4]]),
    ("mean fill", {"fill": "mean", "scale": "none"}, [1, None, 5, 6], [None],
     ["x", "x_missing"], [[4, 1]]),
    ("constant fill, indicator off", {"fill": -1, "indicator": False, "scale": "none"}, [1, None], [None, 3],
     ["x"], [[-1], [3]]),
    ("indicator forced on", {"indicator": True, "scale": "none"}, [1, 3], [None, 2],
     ["x", "x_missing"], [[2, 1], [2, 0]]),
    ("clip to train quantiles", {"clip": [0.1, 0.9], "scale": "none"}, list(range(101)), [-5, 50, 200],
     ["x"], [[10], [50], [90]]),
    ("log1p, signed for negatives", {"log": True, "scale": "none"}, [0, 1], [0, E1, -E1, math.e**2 - 1],
     ["x"], [[0], [1], [-1], [2]]),
    ("minmax", {"scale": "minmax"}, [2, 4, 6], [2, 5, 6, 8],
     ["x"], [[0], [0.75], [1], [1.5]]),
    ("constant column is only shifted", {}, [3, 3, 3], [3, 5],
     ["x"], [[0], [2]]),
    # observed [0, E1, 100] -> clipped to [0, E1] -> median E1 -> log -> 1
    ("clip, then fill, then log", {"clip": [0, 0.5], "log": True, "scale": "none"}, [0, E1, None, 100],
     [None, 100, -3], ["x", "x_missing"], [[1, 1], [1, 0], [0, 0]]),
    # the angle of x mod 24: 30 is 6, -6 is 18
    ("period: sin and cos instead of the value", {"period": 24, "scale": "none"}, [0, 6, 12, 18], [0, 6, 30, -6],
     ["x_sin", "x_cos"], [[0, 1], [1, 0], [1, 0], [-1, 0]]),
    # observed [0, 6, 18]: median 6 -> angle 90 degrees
    ("period: filled before the angle, then indicator", {"period": 24, "scale": "none"}, [0, 6, None, 18],
     [None, 12], ["x_sin", "x_cos", "x_missing"], [[1, 0, 1], [0, -1, 0]]),
    # train sin [0, 1, 0, -1] and cos [1, 0, -1, 0]: each mean 0, std sqrt(1/2); the fill (median 9) is 135 degrees
    ("period: each output scaled on its own", {"period": 24}, [0, 6, 12, 18], [6, None],
     ["x_sin", "x_cos"], [[math.sqrt(2), 0], [1, -1]]),
]


@pytest.mark.parametrize("options,train,test,names,expected", [c[1:] for c in NUMERIC_CASES],
                         ids=[c[0] for c in NUMERIC_CASES])
def test_numeric_transforms(options: dict, train: list, test: list, names: list[str], expected: list) -> None:
    pipeline = _fit({"numeric": {"x": options}}, {"x": train})
    out = pipeline.transform({"x": test})
    assert pipeline.numeric_names == names
    assert out.numeric.dtype == torch.float32
    torch.testing.assert_close(out.numeric, torch.tensor(expected, dtype=torch.float32))


# train, buckets, test, expected indices (0 = missing), cardinality
BUCKET_CASES = [
    # edges at the 25/50/75% quantiles: 2.75, 4.5, 6.25; a value on an edge goes up
    ([1, 2, 3, 4, 5, 6, 7, 8], 4, [1, 2.75, 3, 4.5, 8, 100, -5, None], [1, 2, 2, 3, 4, 4, 1, 0], 5),
    # tied quantiles collapse to one edge at 0
    ([0, 0, 0, 0, 1], 4, [-1, 0, 1, None], [1, 2, 2, 0], 3),
]


@pytest.mark.parametrize("train,buckets,test,expected,cardinality", BUCKET_CASES)
def test_quantile_buckets(train: list, buckets: int, test: list, expected: list[int], cardinality: int) -> None:
    pipeline = _fit({"numeric": {"x": {"buckets": buckets}}}, {"x": train})
    out = pipeline.transform({"x": test})
    assert pipeline.categorical_names == ["x_bucket"]
    assert pipeline.cardinalities == [cardinality]
    assert out.categorical[:, 0].tolist() == expected


TRAIN_CATS = ["a", "b", "a", "c", "a", "b", None, ""]
TEST_CATS = ["a", "b", "c", "zzz", None, NAN, ""]
# options, train, test, expected indices (0 = unknown or missing), cardinality
VOCAB_CASES = [
    ({"min_count": 2}, TRAIN_CATS, TEST_CATS, [1, 2, 0, 0, 0, 0, 0], 3),
    ({"max_size": 1}, TRAIN_CATS, TEST_CATS, [1, 0, 0, 0, 0, 0, 0], 2),
    ({}, ["c", "a", "b", "a"], ["c", "b", "a"], [3, 2, 1], 4),  # by count, then by value (not first seen)
    ({}, [1, 2, 2], [2.0, None, "1", 3], [1, 0, 2, 0], 3),  # compared as text, 2.0 as "2"
    ({}, pd.Series([10, 20, 20]), pd.Series([20.0, NAN, 10.0]), [1, 0, 2], 3),  # int column that gained a NaN
]


@pytest.mark.parametrize("options,train,test,expected,cardinality", VOCAB_CASES)
def test_vocabulary(options: dict, train: Any, test: Any, expected: list[int], cardinality: int) -> None:
    pipeline = _fit({"categorical": {"c": options}}, {"c": train})
    out = pipeline.transform({"c": test})
    assert out.categorical.dtype == torch.int64
    assert out.categorical[:, 0].tolist() == expected
    assert pipeline.cardinalities == [cardinality]


CROSS_SPEC = {
    "numeric": {"amount": {"buckets": 2}},  # one edge at 2.5
    "categorical": {"country": {}, "device": {}},
    "crosses": [{"columns": ["country", "amount_bucket"], "buckets": 1024},
                {"columns": ["country", "device"], "buckets": 1000, "name": "where"}],
}
CROSS_TRAIN = {"amount": [1, 2, 3, 4], "country": ["US", "US", "DE", "FR"], "device": ["mobile"] * 4}


def test_crosses_hard_coded_buckets() -> None:
    """crc32 of the joined values: the same in every process (Python's salted hash() would not be)."""
    pipeline = _fit(CROSS_SPEC, CROSS_TRAIN)
    out = pipeline.transform({"amount": [3, 3], "country": ["US", None], "device": ["mobile", "mobile"]})
    assert pipeline.categorical_names == ["country", "device", "amount_bucket", "country_x_amount_bucket", "where"]
    assert pipeline.cardinalities == [4, 2, 3, 1024, 1000]
    assert out.categorical[:, 3].tolist() == [891, 481]  # crc32("US\x1f2") % 1024, missing country: crc32("\x1f2")
    assert out.categorical[:, 4].tolist() == [318, 402]  # crc32("US\x1fmobile") % 1000, crc32("\x1fmobile") % 1000


def test_crosses_match_per_row_hash() -> None:
    """Hashing once per distinct combination gives every row its own combination's bucket."""
    rng = np.random.default_rng(0)
    countries = rng.choice(np.array(["US", "DE", "FR", "日本", None], dtype=object), 500)
    devices = rng.choice(np.array(["mobile", "web", "app|x", None], dtype=object), 500)
    pipeline = _fit(CROSS_SPEC, CROSS_TRAIN)
    out = pipeline.transform({"amount": [1.0] * 500, "country": countries, "device": devices})
    expected = [zlib.crc32(f"{c or ''}\x1f{d or ''}".encode()) % 1000 for c, d in zip(countries, devices)]
    assert out.categorical[:, 4].tolist() == expected


# template, columns, expected texts
TEMPLATE_CASES = [
    ("{title} ({year}). Genres: {genres}",
     {"title": ["Heat", None], "year": np.array([1995.0, NAN]), "genres": [["Crime", "Drama"], "Comedy"]},
     ["Heat (1995). Genres: Crime, Drama", " (). Genres: Comedy"]),
    ("{{id}}={id}", {"id": [1, 2]}, ["{id}=1", "{id}=2"]),
    ("{name}: {price}", {"name": ["tea", ""], "price": [2.5, 3]}, ["tea: 2.5", ": 3"]),
]


@pytest.mark.parametrize("template,columns,expected", TEMPLATE_CASES)
def test_templates(template: str, columns: dict, expected: list[str]) -> None:
    pipeline = _fit({"templates": {"text": template}}, columns)
    assert pipeline.transform(columns).texts == {"text": expected}


def test_template_field_that_is_not_a_column() -> None:
    pipeline = FeaturePipeline({"templates": {"item_text": "{title} ({yaer})"}})
    with pytest.raises(DataError, match=r"'yaer' \(used by template 'item_text'\).*\['title', 'year'\]"):
        pipeline.fit({"title": ["Heat"], "year": [1995]})


@pytest.mark.parametrize("template", ["{}", "{a.b}", "{a[0]}", "{a:.2f}", "{a!r}", "{a", "a}"])
def test_bad_templates(template: str) -> None:
    with pytest.raises(ValueError, match="template 't'"):
        FeaturePipeline({"templates": {"t": template}})


def test_fit_uses_train_only() -> None:
    spec = {"numeric": {"x": {}}, "categorical": {"c": {}}}
    train = {"x": [0.0, 10.0], "c": ["a", "a"]}
    pipeline = _fit(spec, train)
    before = json.dumps(pipeline.state())
    other = pipeline.transform({"x": [100.0, 200.0], "c": ["b", "b"]})
    assert other.numeric[:, 0].tolist() == [19.0, 39.0]  # train mean 5, std 5
    assert other.categorical[:, 0].tolist() == [0, 0]
    assert json.dumps(pipeline.state()) == before
    assert pipeline.transform(train).numeric[:, 0].tolist() == [-1.0, 1.0]


FULL_SPEC = {
    "numeric": {"Amount": {"fill": "median", "clip": [0.001, 0.999], "log": True, "scale": "standard", "buckets": 10},
                "V1": {"fill": "mean", "scale": "minmax"}},
    "categorical": {"country": {"min_count": 2, "max_size": 1000}},
    "crosses": [{"columns": ["country", "Amount_bucket"], "buckets": 1024}],
    "templates": {"item_text": "{title} ({year}). Genres: {genres}"},
}


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "Amount": np.where(rng.random(n) < 0.1, NAN, rng.lognormal(3, 2, n) * rng.choice([-1, 1], n)),
        "V1": np.where(rng.random(n) < 0.1, NAN, rng.normal(size=n)),
        "country": rng.choice(np.array(["US", "DE", "FR", "CN", "", None, f"new{seed}"], dtype=object), n),
        "title": rng.choice(np.array(["Heat", "Up", None], dtype=object), n),
        "year": np.where(rng.random(n) < 0.2, NAN, rng.integers(1950, 2020, n)),
        "genres": rng.choice(np.array(["Drama", "Comedy|Crime", None], dtype=object), n),
    })


def test_save_load_gives_identical_outputs(tmp_path: Path) -> None:
    train, test = _frame(400, seed=0), _frame(300, seed=1)  # test: an unseen category, NaNs, blanks
    pipeline = _fit(FULL_SPEC, train)
    path = tmp_path / "features.json"
    pipeline.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == pipeline.state()
    loaded = FeaturePipeline.load(path)

    a, b = pipeline.transform(test), loaded.transform(test)
    assert torch.equal(a.numeric, b.numeric) and torch.equal(a.categorical, b.categorical)
    assert a.texts == b.texts
    assert (loaded.numeric_names, loaded.categorical_names, loaded.cardinalities) == (
        pipeline.numeric_names, pipeline.categorical_names, pipeline.cardinalities)
    assert pipeline.numeric_names == ["Amount", "Amount_missing", "V1", "V1_missing"]
    assert not torch.isnan(a.numeric).any()
    unseen = torch.tensor(test["country"] == "new1")
    assert unseen.any() and (a.categorical[unseen, 0] == 0).all()
    missing = torch.tensor(test["Amount"].isna())
    assert missing.any() and (a.numeric[missing, 1] == 1).all() and (a.numeric[~missing, 1] == 0).all()
    assert (a.categorical[missing, 1] == 0).all() and (a.categorical[~missing, 1] > 0).all()


def test_hour_of_day_from_seconds_round_trips(tmp_path: Path) -> None:
    """ULB-style ``Time`` (seconds since the first record) as the hour of day: 23:00 sits next to 01:00, a day later
    is the same hour, and a saved pipeline (whose fitted centre and scale are per output) gives the same features."""
    hours = np.array([1.0, 23.0, 25.0, 12.0, 6.0])
    pipeline = _fit({"numeric": {"Time": {"period": 86400}, "V1": {}}}, {"Time": np.arange(48) * 3600.0,
                                                                         "V1": np.arange(48.0)})
    rows = {"Time": hours * 3600, "V1": np.zeros(5)}
    out = pipeline.transform(rows).numeric
    assert pipeline.numeric_names == ["Time_sin", "Time_cos", "V1"]
    torch.testing.assert_close(out[0, :2], out[2, :2])  # 01:00 on the first and on the second day
    near, far = (out[0, :2] - out[1, :2]).norm(), (out[0, :2] - out[3, :2]).norm()
    assert near < far / 3  # 01:00 is two hours from 23:00, eleven from 12:00
    pipeline.save(tmp_path / "features.json")
    loaded = FeaturePipeline.load(tmp_path / "features.json")
    assert torch.equal(loaded.transform(rows).numeric, out)
    assert loaded.numeric_outputs == {"Time": ["Time_sin", "Time_cos"], "V1": ["V1"]}


def test_state_version_is_checked() -> None:
    state = _fit({"numeric": ["x"]}, {"x": [1, 2]}).state()
    with pytest.raises(ValueError, match="format_version 99"):
        FeaturePipeline.from_state({**state, "format_version": 99})


def test_input_forms_agree() -> None:
    """A DataFrame, a dict of lists, and CSV text (blank = missing) give the same features."""
    spec = {"numeric": {"x": {}}, "categorical": {"c": {}}}
    frame = pd.DataFrame({"x": [1.0, NAN, 2.5, 4.0], "c": ["a", None, "b", "a"]})
    csv_text = {"x": ["1", "", " 2.5 ", "4"], "c": ["a", "", "b", "a"]}
    nullable = {"x": pd.array([1.0, None, 2.5, 4.0], dtype="Float64"), "c": pd.array(["a", None, "b", "a"], dtype="string")}
    outs = [_fit(spec, rows).transform(rows) for rows in (frame, frame.to_dict("list"), csv_text, nullable)]
    for out in outs[1:]:
        assert torch.equal(out.numeric, outs[0].numeric) and torch.equal(out.categorical, outs[0].categorical)


def test_yaml_spec_with_defaults() -> None:
    spec = yaml.safe_load("numeric: {Amount: {log: true}, V1: }\ncategorical: [country]\n")
    normalised = FeaturePipeline(spec).spec
    assert normalised["numeric"]["V1"] == {"fill": "median", "indicator": "auto", "clip": None, "log": False,
                                           "period": None, "scale": "standard", "buckets": None}
    assert normalised["numeric"]["Amount"]["log"] is True
    assert normalised["categorical"] == {"country": {"min_count": 1, "max_size": None}}


# spec, fit rows, transform rows (None: the error comes from fit), message pattern
DATA_ERRORS = [
    ({"numeric": ["x"]}, {"y": [1]}, None, r"missing column 'x' \(used by numeric feature\).*\['y'\]"),
    ({"numeric": ["x"], "categorical": ["c"]}, {"x": [1], "c": ["a"]}, {"x": [1]},
     r"missing column 'c' \(used by categorical feature\).*\['x'\]"),
    ({"numeric": ["x"]}, {"x": ["1", "2", "abc"]}, None, r"row 3, column 'x': 'abc' is not a finite number"),
    ({"numeric": ["x"]}, {"x": [1.0, 2.0]}, {"x": [1.0, math.inf]}, r"row 2, column 'x': inf is not a finite number"),
    ({"numeric": ["x"]}, {"x": [1.0, 2.0]}, {"x": ["3", "1e400x"]}, r"row 2, column 'x': '1e400x'"),
    ({"numeric": ["x"]}, {"x": [None, ""]}, None, r"column 'x': no values in the training rows"),
    ({"numeric": ["x"]}, {"x": []}, None, r"no training rows"),
    ({"numeric": ["x"], "categorical": ["c"]}, {"x": [1, 2], "c": ["a"]}, None, r"different lengths"),
]


@pytest.mark.parametrize("spec,train,test,pattern", DATA_ERRORS)
def test_data_errors_name_column_and_row(spec: dict, train: dict, test: dict | None, pattern: str) -> None:
    pipeline = FeaturePipeline(spec)
    if test is not None:
        pipeline.fit(train)
    with pytest.raises(DataError, match=pattern):
        pipeline.transform(test) if test is not None else pipeline.fit(train)


SPEC_ERRORS = [
    ({"numerics": ["x"]}, r"unknown section\(s\) \['numerics'\]"),
    ({"numeric": {"x": {"scaling": "standard"}}}, r"numeric column 'x': unknown option\(s\) \['scaling'\]"),
    ({"numeric": {"x": {"fill": "mode"}}}, r"numeric column 'x'.*fill is 'mode'"),
    ({"numeric": {"x": {"clip": [0.9, 0.1]}}}, r"clip is \[0.9, 0.1\]"),
    ({"numeric": {"x": {"scale": "zscore"}}}, r"scale is 'zscore'"),
    ({"numeric": {"x": {"buckets": 1}}}, r"buckets is 1"),
    ({"numeric": {"x": {"period": 0}}}, r"period is 0; expected a positive number"),
    ({"numeric": {"x": {"period": "day"}}}, r"period is 'day'"),
    ({"categorical": {"c": {"min_count": 0}}}, r"categorical column 'c'.*min_count is 0"),
    ({"categorical": ["c"], "crosses": [{"columns": ["c"]}]}, r"cross 1.*two or more"),
    ({"numeric": ["x"], "categorical": ["c"], "crosses": [{"columns": ["c", "x"]}]},
     r"cross 'c_x_x' uses \['x'\], which are not categorical"),
    ({"numeric": {"x": {"buckets": 4}}, "categorical": ["x_bucket"]}, r"names repeat"),
    ({}, r"defines no features"),
]


@pytest.mark.parametrize("spec,pattern", SPEC_ERRORS)
def test_spec_errors(spec: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        FeaturePipeline(spec)


def test_transform_before_fit() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        FeaturePipeline({"numeric": ["x"]}).transform({"x": [1]})


def test_300k_rows_by_30_columns() -> None:
    """Performance smoke: the transform is vectorised (no timing assertion)."""
    n, rng = 300_000, np.random.default_rng(0)
    columns: dict[str, Any] = {f"V{i}": rng.normal(size=n) for i in range(24)}
    columns["Amount"] = np.where(rng.random(n) < 0.05, NAN, rng.lognormal(3, 2, n))
    for j in range(4):
        columns[f"c{j}"] = rng.choice(np.array([f"k{i}" for i in range(500)], dtype=object), n)
    columns["title"] = rng.choice(np.array(["Heat", "Up", None], dtype=object), n)
    spec = {"numeric": {**{f"V{i}": {} for i in range(24)}, "Amount": {"clip": [0.001, 0.999], "log": True, "buckets": 10}},
            "categorical": [f"c{j}" for j in range(4)], "crosses": [{"columns": ["c0", "Amount_bucket"]}],
            "templates": {"t": "{title}: {c1}"}}
    frame = pd.DataFrame(columns)
    out = _fit(spec, frame.iloc[:20_000]).transform(frame)
    assert out.numeric.shape == (n, 26) and out.categorical.shape == (n, 6) and len(out.texts["t"]) == n
