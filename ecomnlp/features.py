"""Feature engineering for tasks with structured fields: declarative per-column transforms,
fitted on the training split only and saved as JSON, so prediction applies exactly the same ones.

The spec is a plain dict (it can come from YAML); a section may also be a list of column names,
which takes every default::

    numeric:     {Amount: {fill: median, clip: [0.001, 0.999], log: true, scale: standard, buckets: 10}, V1: {},
                  Time: {period: 86400}}
    categorical: {country: {min_count: 2, max_size: 1000}}
    crosses:     [{columns: [country, Amount_bucket], buckets: 1024}]
    templates:   {item_text: "{title} ({year}). Genres: {genres}"}

Numeric columns, in this order:
    missing values: None, NaN, and blank strings (CSV); a value that is not a finite number raises;
    clip   [lo, hi] quantiles of the training values (default: no clipping);
    fill   "median" (default) or "mean" of the clipped training values, or a number (raw units);
    log    sign(x) * log1p(|x|), i.e. log1p for non-negative values (default: off);
    period P: a cyclical value (hour of day from seconds: 86400; day of week: 604800) as the angle
           2 pi (x mod P) / P, emitted as two columns ``<name>_sin`` and ``<name>_cos`` instead of ``<name>``, so
           the end of a cycle is next to its start (default: none);
    scale  "standard" (default; population std), "minmax" or "none", each output column on its own; a constant
           column is only shifted;
    indicator  an extra 0/1 column ``<name>_missing``: "auto" (default) adds it only when the training
           rows had missing values (one that is always 0 in training teaches a model nothing), or true/false;
    buckets    B quantile bins of the training values, emitted as the categorical column ``<name>_bucket``:
           1..B for values (fewer where quantiles tie), 0 for missing.
Categorical columns: a vocabulary of training values seen at least ``min_count`` times (default 1),
the ``max_size`` most frequent (default: all; ties by value), as indices 1..V. Index 0 is unknown or
missing, so unseen values, None, NaN and blanks map to 0. Values are compared as text, and
integral floats as integers (3.0 -> "3"), so a pandas int column that gained a NaN still matches.
Crosses of categorical or bucket columns: crc32 of the values joined by U+001F (missing as ""),
modulo ``buckets`` (default 1024); stable across processes and machines, using all indices 0..N-1.
Templates render columns as text for the encoder; missing values render as "".

Categorical outputs are ordered: categorical columns, bucket columns, crosses.
"""
from __future__ import annotations

import copy
import json
import math
import string
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .artifact import write_json_atomic
from .data import DataError

FORMAT_VERSION = 1
_SEP = "\x1f"
_SECTIONS = ("numeric", "categorical", "crosses", "templates")
_NUMERIC = {"fill": "median", "indicator": "auto", "clip": None, "log": False, "period": None, "scale": "standard",
            "buckets": None}
_CATEGORICAL = {"min_count": 1, "max_size": None}
_CROSS = {"columns": None, "buckets": 1024, "name": None}

Table = pd.DataFrame | Mapping[str, Sequence[Any]]


@dataclass
class Features:
    """Model inputs for n rows."""

    numeric: torch.Tensor  # float32 [n, len(numeric_names)]
    categorical: torch.Tensor  # int64 [n, len(categorical_names)]
    texts: dict[str, list[str]]  # template name -> n texts


class FeaturePipeline:
    """Fit on the training rows, then ``transform`` any rows the same way; ``save``/``load`` as JSON."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = _normalise(spec)
        self._templates = {name: _parse_template(name, t) for name, t in self.spec["templates"].items()}
        numeric = self.spec["numeric"]
        self.categorical_names: list[str] = (
            list(self.spec["categorical"])
            + [f"{c}_bucket" for c, o in numeric.items() if o["buckets"]]
            + [x["name"] for x in self.spec["crosses"]]
        )
        if len(set(self.categorical_names)) < len(self.categorical_names):
            raise ValueError(f"feature spec: categorical output names repeat: {self.categorical_names}")
        for x in self.spec["crosses"]:
            unknown = [c for c in x["columns"] if c not in self.categorical_names]
            if unknown:
                raise ValueError(f"feature spec: cross '{x['name']}' uses {unknown}, which are not categorical "
                                 f"or bucket columns; those are {self.categorical_names}")
        self._uses: dict[str, list[str]] = {}
        for section in ("numeric", "categorical"):
            for c in self.spec[section]:
                self._uses.setdefault(c, []).append(f"{section} feature")
        for name, parts in self._templates.items():
            for _, field in parts:
                if field is not None:
                    self._uses.setdefault(field, []).append(f"template '{name}'")
        self._fitted: dict[str, Any] | None = None

    def fit(self, rows: Table) -> FeaturePipeline:
        """Learn fill values, quantiles, scales and vocabularies from the training rows only."""
        columns, n = self._columns(rows)
        if n == 0:
            raise DataError("no training rows to fit the features on")
        self._set_fitted({
            "numeric": {c: _fit_numeric(_numbers(columns[c], c), o, c) for c, o in self.spec["numeric"].items()},
            "vocab": {c: _fit_vocab(_keys(columns[c]), o) for c, o in self.spec["categorical"].items()},
        })
        return self

    def transform(self, rows: Table) -> Features:
        """Features for ``rows``, with the fitted parameters (nothing is refitted)."""
        fitted = self._require_fitted()
        columns, n = self._columns(rows)
        numeric: list[np.ndarray] = []
        buckets: dict[str, np.ndarray] = {}
        for c, o in self.spec["numeric"].items():
            f, x = fitted["numeric"][c], _numbers(columns[c], c)
            values = _scaled(x, f, o)
            numeric.extend(values.T if o["period"] else [values])
            if f["indicator"]:
                numeric.append(np.isnan(x))
            if f["edges"] is not None:
                buckets[f"{c}_bucket"] = np.where(np.isnan(x), 0, np.searchsorted(f["edges"], x, side="right") + 1)
        keys = {c: _keys(columns[c]) for c in self.spec["categorical"]}
        categorical = [self._index[c].get_indexer(k) + 1 for c, k in keys.items()] + list(buckets.values())
        parts = {**keys, **buckets}
        categorical += [_cross([parts[c] for c in x["columns"]], x["buckets"]) for x in self.spec["crosses"]]
        return Features(
            numeric=torch.from_numpy(_matrix(numeric, n, np.float32)),
            categorical=torch.from_numpy(_matrix(categorical, n, np.int64)),
            texts={name: _render(p, columns, n) for name, p in self._templates.items()},
        )

    @property
    def numeric_outputs(self) -> dict[str, list[str]]:
        """Each numeric column's output columns, in order: its value (``_sin``, ``_cos`` with a period), then its
        missing indicator if it has one."""
        fitted = self._require_fitted()["numeric"]
        return {c: ([f"{c}_sin", f"{c}_cos"] if o["period"] else [c]) + [f"{c}_missing"] * fitted[c]["indicator"]
                for c, o in self.spec["numeric"].items()}

    @property
    def numeric_names(self) -> list[str]:
        """Names of the numeric output columns, missing indicators included."""
        return [name for names in self.numeric_outputs.values() for name in names]

    @property
    def cardinalities(self) -> list[int]:
        """Number of indices of each categorical output column (embedding table sizes)."""
        fitted = self._require_fitted()
        edges = [fitted["numeric"][c]["edges"] for c in self.spec["numeric"]]
        return ([len(fitted["vocab"][c]) + 1 for c in self.spec["categorical"]]
                + [len(e) + 2 for e in edges if e is not None]
                + [x["buckets"] for x in self.spec["crosses"]])

    def state(self) -> dict[str, Any]:
        """The spec and the fitted parameters, as plain JSON-able data."""
        return copy.deepcopy({"format_version": FORMAT_VERSION, "spec": self.spec, "fitted": self._require_fitted()})

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> FeaturePipeline:
        if state.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"feature state: unsupported format_version {state.get('format_version')!r}")
        pipeline = cls(state["spec"])
        pipeline._set_fitted(copy.deepcopy(state["fitted"]))
        return pipeline

    def save(self, path: str | Path) -> None:
        write_json_atomic(Path(path), self.state())

    @classmethod
    def load(cls, path: str | Path) -> FeaturePipeline:
        return cls.from_state(json.loads(Path(path).read_text(encoding="utf-8")))

    def _set_fitted(self, fitted: dict[str, Any]) -> None:
        self._fitted = fitted
        self._index = {c: pd.Index(v, dtype=object) for c, v in fitted["vocab"].items()}

    def _require_fitted(self) -> dict[str, Any]:
        if self._fitted is None:
            raise RuntimeError("the feature pipeline is not fitted: call fit() on the training rows, or load() one")
        return self._fitted

    def _columns(self, rows: Table) -> tuple[dict[str, pd.Series], int]:
        """The columns the spec uses, as Series of equal length; a missing one raises DataError."""
        if not isinstance(rows, (pd.DataFrame, Mapping)):
            raise TypeError(f"rows must be a pandas DataFrame or a dict of columns, not {type(rows).__name__}")
        available = list(rows.columns if isinstance(rows, pd.DataFrame) else rows)
        missing = [c for c in self._uses if c not in available]
        if missing:
            listed = ", ".join(f"'{c}' (used by {' and '.join(self._uses[c])})" for c in missing)
            raise DataError(f"missing column {listed}; the data has columns {available}")
        columns = {c: rows[c] if isinstance(rows, pd.DataFrame) else pd.Series(rows[c]) for c in self._uses}
        lengths = {c: len(s) for c, s in columns.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"columns have different lengths: {lengths}")
        return columns, next(iter(lengths.values()))


def _normalise(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with every default filled in; a wrong option raises ValueError naming it."""
    unknown = set(spec) - set(_SECTIONS)
    if unknown:
        raise ValueError(f"feature spec: unknown section(s) {sorted(unknown)}; use {list(_SECTIONS)}")
    numeric = _options(spec, "numeric", _NUMERIC)
    for column, o in numeric.items():
        c = f"numeric column '{column}'"
        o["scale"] = o["scale"] or "none"
        fill, clip = o["fill"], o["clip"]
        _check(fill in ("median", "mean") or _is_number(fill) and math.isfinite(fill), c, "fill", fill,
               "'median', 'mean' or a number")
        _check(o["indicator"] == "auto" or isinstance(o["indicator"], bool), c, "indicator", o["indicator"],
               "'auto', true or false")
        _check(clip is None or isinstance(clip, (list, tuple)) and len(clip) == 2 and all(map(_is_number, clip))
               and 0 <= clip[0] < clip[1] <= 1, c, "clip", clip, "[low, high] quantiles with 0 <= low < high <= 1")
        _check(isinstance(o["log"], bool), c, "log", o["log"], "true or false")
        _check(o["period"] is None or _is_number(o["period"]) and math.isfinite(o["period"]) and o["period"] > 0,
               c, "period", o["period"], "a positive number")
        _check(o["scale"] in ("standard", "minmax", "none"), c, "scale", o["scale"], "'standard', 'minmax' or 'none'")
        _check(o["buckets"] is None or _is_int(o["buckets"], 2), c, "buckets", o["buckets"], "an integer >= 2")
        o["clip"] = list(clip) if clip is not None else None
    categorical = _options(spec, "categorical", _CATEGORICAL)
    for column, o in categorical.items():
        c = f"categorical column '{column}'"
        _check(_is_int(o["min_count"], 1), c, "min_count", o["min_count"], "an integer >= 1")
        _check(o["max_size"] is None or _is_int(o["max_size"], 1), c, "max_size", o["max_size"], "an integer >= 1")
    crosses = []
    for i, x in enumerate(spec.get("crosses") or [], start=1):
        x = {**_CROSS, **_known(x, _CROSS, f"cross {i}")}
        columns = x["columns"]
        _check(isinstance(columns, (list, tuple)) and len(columns) >= 2 and len(set(columns)) == len(columns),
               f"cross {i}", "columns", columns, "a list of two or more different columns")
        _check(_is_int(x["buckets"], 2), f"cross {i}", "buckets", x["buckets"], "an integer >= 2")
        crosses.append({"columns": list(columns), "buckets": x["buckets"], "name": x["name"] or "_x_".join(columns)})
    templates = dict(spec.get("templates") or {})
    for name, template in templates.items():
        _check(isinstance(template, str), f"template '{name}'", "text", template, "a string")
    if not (numeric or categorical or crosses or templates):
        raise ValueError("feature spec defines no features")
    return {"numeric": numeric, "categorical": categorical, "crosses": crosses, "templates": templates}


def _options(spec: Mapping[str, Any], section: str, defaults: dict[str, Any]) -> dict[str, dict[str, Any]]:
    raw = spec.get(section) or {}
    if isinstance(raw, (list, tuple)):
        raw = dict.fromkeys(raw)
    return {str(c): {**defaults, **_known(o or {}, defaults, f"{section} column '{c}'")} for c, o in raw.items()}


def _known(options: Mapping[str, Any], defaults: dict[str, Any], where: str) -> Mapping[str, Any]:
    if not isinstance(options, Mapping):
        raise ValueError(f"feature spec, {where}: expected a mapping of options, got {options!r}")
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(f"feature spec, {where}: unknown option(s) {sorted(unknown)}; use {list(defaults)}")
    return options


def _check(ok: bool, where: str, option: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"feature spec, {where}: {option} is {value!r}; expected {expected}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _parse_template(name: str, template: str) -> list[tuple[str, str | None]]:
    """(literal text, column or None) pairs; only plain ``{column}`` fields are allowed."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"feature spec, template '{name}': {err} in {template!r}") from None
    for _, field, format_spec, conversion in parsed:
        if field is not None and (not field or format_spec or conversion or any(ch in field for ch in ".[")):
            raise ValueError(f"feature spec, template '{name}': use plain {{column}} fields, without "
                             f"positional {{}}, attributes, indices, conversions or format specs: {template!r}")
    return [(literal, field) for literal, field, _, _ in parsed]


def _is_missing(value: Any) -> bool:
    return (value is None or value is pd.NA or isinstance(value, float) and math.isnan(value)
            or isinstance(value, str) and not value.strip())


def _numbers(series: pd.Series, column: str) -> np.ndarray:
    """float64 values, NaN where missing; a value that is not a finite number raises DataError."""
    if pd.api.types.is_numeric_dtype(series.dtype):
        x = series.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(np.isinf(x))
    else:
        raw = series.to_numpy(dtype=object)
        x = pd.to_numeric(raw, errors="coerce").astype(np.float64)
        bad = [i for i in np.flatnonzero(~np.isfinite(x)) if not _is_missing(raw[i])]
    if len(bad):
        value = series.iloc[bad[0]]
        value = value.item() if isinstance(value, np.generic) else value
        raise DataError(f"row {bad[0] + 1}, column '{column}': {value!r} is not a finite number")
    return x


def _key(value: Any) -> str | None:
    """A value as text for vocabularies, crosses and templates; None when missing."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v) for v in value)
    if _is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _keys(series: pd.Series) -> np.ndarray:
    """``_key`` of every value, vectorised for the common column types (object array)."""
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        x = series.to_numpy()
        missing = np.isnan(x)
        integral = ~missing & (np.floor(x) == x) & (np.abs(x) < 2.0**63)
        keys = x.astype(str).astype(object)
        keys[integral] = x[integral].astype(np.int64).astype(str)
        keys[missing] = None
        return keys
    if isinstance(dtype, np.dtype) and dtype.kind in "biu":
        return series.to_numpy().astype(str).astype(object)
    values = series.to_numpy(dtype=object)
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return np.where(pd.isna(values), None, values)
    return np.array([_key(v) for v in values], dtype=object)


def _fit_numeric(x: np.ndarray, options: dict[str, Any], column: str) -> dict[str, Any]:
    observed = x[~np.isnan(x)]
    if observed.size == 0:
        raise DataError(f"column '{column}': no values in the training rows")
    clip = [float(q) for q in np.quantile(observed, options["clip"])] if options["clip"] else None
    clipped = np.clip(observed, *clip) if clip else observed
    fill = options["fill"]
    fitted = {
        "fill": float(np.median(clipped) if fill == "median" else np.mean(clipped) if fill == "mean" else fill),
        "indicator": bool(observed.size < x.size) if options["indicator"] == "auto" else options["indicator"],
        "clip": clip, "center": 0.0, "scale": 1.0, "edges": None,
    }
    values = _scaled(x, fitted, options)  # per output column: [n], or [n, 2] with a period
    if options["scale"] != "none":
        standard = options["scale"] == "standard"
        center = values.mean(0) if standard else values.min(0)
        spread = values.std(0) if standard else values.max(0) - values.min(0)
        fitted["center"], fitted["scale"] = center.tolist(), np.where(spread == 0, 1.0, spread).tolist()
    if options["buckets"]:
        inner = np.linspace(0, 1, options["buckets"] + 1)[1:-1]
        fitted["edges"] = np.unique(np.quantile(observed, inner)).tolist()
    return fitted


def _scaled(x: np.ndarray, fitted: dict[str, Any], options: dict[str, Any]) -> np.ndarray:
    """clip -> fill -> log -> period -> scale, in float64: [n], or [n, 2] (sin, cos) with a period."""
    if fitted["clip"]:
        x = np.clip(x, *fitted["clip"])
    x = np.where(np.isnan(x), fitted["fill"], x)
    if options["log"]:
        x = np.sign(x) * np.log1p(np.abs(x))
    if options["period"]:
        angle = 2 * np.pi * np.mod(x, options["period"]) / options["period"]
        x = np.stack([np.sin(angle), np.cos(angle)], axis=1)
    return (x - np.asarray(fitted["center"])) / np.asarray(fitted["scale"])


def _fit_vocab(keys: np.ndarray, options: dict[str, Any]) -> list[str]:
    counts = pd.Series(keys, dtype=object).value_counts()
    counts = counts[(counts >= options["min_count"]) & (counts.index.str.strip() != "")]
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [k for k, _ in ordered][: options["max_size"]]


def _cross(parts: list[np.ndarray], buckets: int) -> np.ndarray:
    """crc32 of each row's values joined by U+001F, modulo ``buckets``; hashed once per distinct combination."""
    combo = np.zeros(len(parts[0]), dtype=np.int64)
    codes, texts = [], []
    for values in parts:
        c, uniques = pd.factorize(values)  # missing -> -1, which picks the trailing ""
        combo, _ = pd.factorize(combo * (len(uniques) + 1) + c + 1)
        codes.append(c)
        texts.append([str(u) for u in uniques] + [""])
    row = np.empty(combo.max() + 1 if combo.size else 0, dtype=np.int64)
    row[combo] = np.arange(combo.size)  # one row of each combination
    hashes = [zlib.crc32(_SEP.join(t[c[r]] for t, c in zip(texts, codes)).encode()) for r in row.tolist()]
    return np.array(hashes, dtype=np.int64)[combo] % buckets


def _render(parts: list[tuple[str, str | None]], columns: dict[str, pd.Series], n: int) -> list[str]:
    out = np.full(n, "", dtype=object)
    for literal, field in parts:
        if literal:
            out = out + literal
        if field is not None:
            keys = _keys(columns[field])
            keys[pd.isna(keys)] = ""
            out = out + keys
    return out.tolist()


def _matrix(columns: list[np.ndarray], n: int, dtype: type) -> np.ndarray:
    if not columns:
        return np.zeros((n, 0), dtype=dtype)
    return np.stack(columns, axis=1).astype(dtype)
