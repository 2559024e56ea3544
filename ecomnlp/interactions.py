"""User-item interactions for recommendation: reading files (plain tables, the RecBole atomic format, the MovieLens
formats), per-user splits, item cold-start splits, user histories and negative sampling.

    interactions ──read_interactions──▶ columns user, item[, rating, time] (ids as text)
    ──positives (rating >= min_rating, duplicates dropped)──▶ split_per_user (stratified / temporal / random)
    training positives ──Histories (CSR, oldest first)──▶ the user side;  NegativeSampler ──▶ unseen items

Formats, recognised by file name:
    RecBole atomic   ``*.inter`` / ``*.user`` / ``*.item``: tab-separated, header ``name:type`` (the type is dropped;
                     ``token_seq`` fields stay space-separated text); canonical ids ``user_id`` / ``item_id``.
    MovieLens 100k   ``u.data`` (user, item, rating, timestamp; tabs, no header), ``u.item`` (pipe-separated, latin-1,
                     19 genre flags -> ``genres`` "Action|Comedy"), ``u.user`` (age, gender, occupation, zip code).
    MovieLens 1M/10M ``ratings.dat``, ``movies.dat``, ``users.dat`` (``::``-separated).
    MovieLens latest ``ratings.csv`` / ``movies.csv`` (plain CSV: userId, movieId, rating, timestamp; title, genres).
    anything else    CSV / TSV / JSONL / Parquet (``tabular.read_frame``).
MovieLens titles "Toy Story (1995)" are split into ``title`` and ``year``. Column names are mapped with
``columns`` ({user: userId, item: movieId, rating: stars, time: ts}); without a mapping the usual names are found
(user_id / userId / user, item_id / movieId / item_id / item, rating, timestamp / time).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from .data import DataError
from .features import _keys
from .tabular import read_frame

SplitMethod = Literal["stratified", "temporal", "random"]
FIELDS = ("user", "item", "rating", "time")
_GUESSES = {
    "user": ("user", "user_id", "userId", "UserID", "userid", "customer_id"),
    "item": ("item", "item_id", "movieId", "MovieID", "itemId", "product_id", "movie_id"),
    "rating": ("rating", "Rating", "score", "stars"),
    "time": ("time", "timestamp", "Timestamp", "ts", "datetime"),
}
_ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                  "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                  "War", "Western"]
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


# --- reading ------------------------------------------------------------------------------------------------

def read_table(path: str | Path) -> pd.DataFrame:
    """One file as a DataFrame, in whichever of the formats above its name says."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    name, suffix = path.name.lower(), path.suffix.lower()
    if suffix in (".inter", ".user", ".item") and name not in ("u.user", "u.item"):
        return _read_atomic(path)
    if name == "u.data" or re.fullmatch(r"u\d\.(base|test)|u[ab]\.(base|test)", name):
        return _read(path, sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"])
    if name == "u.item":
        frame = _read(path, sep="|", header=None, encoding="latin-1",
                      names=["item_id", "title", "release_date", "video_release_date", "url", *_ML100K_GENRES])
        flags = frame[_ML100K_GENRES].to_numpy(dtype=bool)
        frame["genres"] = ["|".join(g for g, on in zip(_ML100K_GENRES, row) if on) for row in flags]
        return _split_titles(frame.drop(columns=_ML100K_GENRES + ["video_release_date", "url"]))
    if name == "u.user":
        return _read(path, sep="|", header=None, names=["user_id", "age", "gender", "occupation", "zip_code"])
    if suffix == ".dat":
        names = {"ratings.dat": ["user_id", "item_id", "rating", "timestamp"],
                 "movies.dat": ["item_id", "title", "genres"],
                 "users.dat": ["user_id", "gender", "age", "occupation", "zip_code"],
                 "tags.dat": ["user_id", "item_id", "tag", "timestamp"]}.get(name)
        if names is None:
            raise DataError(f"{path}: unknown MovieLens .dat file (ratings.dat, movies.dat, users.dat, tags.dat)")
        frame = _read(path, sep="::", header=None, names=names, engine="python", encoding="latin-1")
        return _split_titles(frame) if name == "movies.dat" else frame
    frame = read_frame(path)
    if name == "movies.csv" and "title" in frame.columns and "year" not in frame.columns:
        frame = _split_titles(frame)
    return frame


def _read(path: Path, **options: object) -> pd.DataFrame:
    options = {"na_values": [""], **options}
    try:
        frame = pd.read_csv(path, keep_default_na=False, **options)
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read: {err}") from err
    if frame.empty:
        raise DataError(f"{path}: the file has no data rows")
    return frame


def _read_atomic(path: Path) -> pd.DataFrame:
    """RecBole atomic file: tab-separated, header fields ``name:type``; float fields as numbers, the rest as text."""
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
    names, types = zip(*[(h.split(":", 1) + ["token"])[:2] for h in header])
    dtypes = {n: (float if t == "float" else str) for n, t in zip(names, types)}
    # RecBole's MovieLens files spell a missing value "unknown" (or "unkonwn", e.g. a release year)
    frame = _read(path, sep="\t", header=0, names=list(names), dtype=dtypes, quoting=3,
                  na_values=["", "unknown", "unkonwn"])
    if "movie_title" in frame.columns and "title" not in frame.columns:
        frame = frame.rename(columns={"movie_title": "title"})
    if "release_year" in frame.columns and "title" in frame.columns:  # RecBole's MovieLens items
        # one ml-100k row has the year inside its title ("... (1995)") and "V" as its year
        parsed = _split_titles(frame[["title"]])
        year = pd.to_numeric(frame["release_year"], errors="coerce")
        frame["release_year"] = year.where(year.notna(), parsed["year"])
        frame["title"] = parsed["title"]
    return frame


def _split_titles(frame: pd.DataFrame) -> pd.DataFrame:
    """MovieLens "Title (1995)" -> title "Title", year 1995 (missing when the title has no year)."""
    if "title" not in frame.columns or "year" in frame.columns:
        return frame
    parts = frame["title"].astype(str).str.extract(_TITLE_YEAR)
    frame = frame.copy()
    frame["year"] = pd.to_numeric(parts[1], errors="coerce")
    frame["title"] = parts[0].where(parts[0].notna(), frame["title"])
    return frame


def column_map(frame: pd.DataFrame, columns: Mapping[str, str], fields: Sequence[str], where: str,
               required: Sequence[str] = ()) -> dict[str, str]:
    """field -> column of ``frame``: the mapping's column, else the first usual name the frame has."""
    found = {}
    for field in fields:
        if field in columns:
            if columns[field] not in frame.columns:
                raise DataError(f"{where}: missing column '{columns[field]}' (mapped to {field}); "
                                f"the file has columns {list(frame.columns)}")
            found[field] = columns[field]
            continue
        guess = next((c for c in _GUESSES[field] if c in frame.columns), None)
        if guess is not None:
            found[field] = guess
        elif field in required:
            raise DataError(f"{where}: no {field} column (tried {list(_GUESSES[field])}; map one with "
                            f"columns: {{{field}: <column>}}); the file has columns {list(frame.columns)}")
    return found


def as_ids(values: Sequence[object] | pd.Series) -> np.ndarray:
    """Ids as text (object array): 42, 42.0 and "42" are the same id; missing ids are None. One string is refused
    (a list of its characters is not what was meant)."""
    if isinstance(values, str):
        raise TypeError(f"expected a list of ids, got the string {values!r}: write [{values!r}]")
    return _keys(pd.Series(list(values)) if not isinstance(values, pd.Series) else values)


@dataclass
class Interactions:
    """Interactions (columns ``user``, ``item``, maybe ``rating`` and ``time``; ids as text), and the user and item
    tables (``user`` / ``item`` id column plus attributes), each row one user or item."""

    frame: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    source: str


def read_interactions(interactions: str | Path | pd.DataFrame, users: str | Path | pd.DataFrame | None = None,
                      items: str | Path | pd.DataFrame | None = None, columns: Mapping[str, str] | None = None,
                      min_rating: float | None = None) -> Interactions:
    """Read the interactions and the optional user and item files into canonical columns.

    Without an item (user) file, the item (user) table is built from the interactions file: one row per item
    (user), with the other columns of its first row (e.g. title and genres in a combined ratings file). Rows with
    a rating below ``min_rating`` are dropped (None: every row is a positive); a repeated (user, item) pair is
    kept once (its latest row, by time when there is one). Items of the item file with no interaction stay in
    the catalogue.
    """
    columns = dict(columns or {})
    where = str(interactions) if not isinstance(interactions, pd.DataFrame) else "interactions"
    raw = interactions if isinstance(interactions, pd.DataFrame) else read_table(interactions)
    found = column_map(raw, columns, FIELDS, where, required=("user", "item"))
    frame = pd.DataFrame({field: raw[c].to_numpy() for field, c in found.items()})
    frame["user"], frame["item"] = as_ids(frame["user"]), as_ids(frame["item"])
    bad = np.flatnonzero(pd.isna(frame["user"]).to_numpy() | pd.isna(frame["item"]).to_numpy())
    if len(bad):
        raise DataError(f"{where}: row {bad[0] + 1}: missing user or item id")
    if "rating" in frame.columns:
        frame["rating"] = pd.to_numeric(frame["rating"], errors="coerce")
        if min_rating is not None:
            frame = frame[frame["rating"] >= min_rating]
    elif min_rating is not None:
        raise DataError(f"{where}: min_rating is set but there is no rating column")
    if "time" in frame.columns and not pd.api.types.is_numeric_dtype(frame["time"].dtype):
        frame["time"] = pd.to_datetime(frame["time"], utc=True).astype("int64") // 10**9
    order = np.argsort(frame["time"].to_numpy(), kind="stable") if "time" in frame.columns else np.arange(len(frame))
    frame = frame.iloc[order].drop_duplicates(["user", "item"], keep="last").sort_index().reset_index(drop=True)
    if frame.empty:
        raise DataError(f"{where}: no interactions left (min_rating {min_rating})")
    extra = [c for c in raw.columns if c not in found.values()]
    side = {"user": users, "item": items}
    tables = {}
    for field, source in side.items():
        if source is None:
            table = raw[[found[field], *extra]].copy()
            table[found[field]] = as_ids(table[found[field]])
            table = table.drop_duplicates(found[field]).rename(columns={found[field]: field})
            table = table[table[field].isin(set(frame[field]))]
        else:
            name = str(source) if not isinstance(source, pd.DataFrame) else f"{field}s"
            table = source if isinstance(source, pd.DataFrame) else read_table(source)
            id_column = column_map(table, columns, [field], name, required=[field])[field]
            table = table.rename(columns={id_column: field}).copy()
            table[field] = as_ids(table[field])
            table = table[table[field].notna()].drop_duplicates(field)
            known = set(table[field])
            unknown = sorted(set(frame[field]) - known)
            if unknown:  # interactions of ids the side table lacks: they still count, with missing attributes
                table = pd.concat([table, pd.DataFrame({field: unknown})], ignore_index=True)
        tables[field] = table.reset_index(drop=True)
    return Interactions(frame, tables["user"], tables["item"], where)


# --- splits -------------------------------------------------------------------------------------------------

def split_per_user(frame: pd.DataFrame, fraction: float, method: SplitMethod = "stratified",
                   seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, held out): for every user, ``fraction`` of their rows is held out.

    ``stratified`` follows the Microsoft Recommenders ``python_stratified_split``: each user's rows are shuffled
    (``DataFrame.sample(frac=1, random_state=seed)``) and the first round((1 - fraction) * n) are kept.
    ``temporal``: each user's latest rows (by ``time``) are held out. ``random``: a seeded share of all rows,
    whoever they belong to.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be between 0 and 1, not {fraction}")
    if method == "random":
        held = np.random.default_rng(seed).random(len(frame)) < fraction
        return frame[~held], frame[held]
    if method == "temporal" and "time" not in frame.columns:
        raise DataError("a temporal split needs a time column (map it with columns: {time: <column>})")
    kept, held = [], []
    for _, group in frame.groupby("user", sort=True):
        if method == "stratified":
            group = group.sample(frac=1, random_state=seed)
        elif method == "temporal":
            group = group.iloc[np.argsort(group["time"].to_numpy(), kind="stable")]
        else:
            raise ValueError(f"unknown split {method!r}; use stratified, temporal or random")
        cut = round((1 - fraction) * len(group))
        kept.append(group.index[:cut])
        held.append(group.index[cut:])
    return frame.loc[np.concatenate(kept)], frame.loc[np.concatenate(held)]


def cold_items(frame: pd.DataFrame, fraction: float, seed: int) -> set[str]:
    """A seeded ``fraction`` of the items that have interactions, to hold out of training entirely."""
    items = np.array(sorted(set(frame["item"])), dtype=object)
    count = int(round(len(items) * fraction))
    if not 0 < count < len(items):
        raise DataError(f"cannot hold out {fraction:.0%} of {len(items)} items")
    return set(np.random.default_rng(seed).permutation(items)[:count].tolist())


# --- histories and negatives ----------------------------------------------------------------------------------

class Histories:
    """Each user's training items (catalogue rows), oldest first, as one CSR array; ``of`` gives a user's last
    ``limit`` items."""

    def __init__(self, indptr: np.ndarray, items: np.ndarray) -> None:
        self.indptr, self.items = indptr.astype(np.int64), items.astype(np.int64)

    @classmethod
    def build(cls, users: np.ndarray, items: np.ndarray, n_users: int, times: np.ndarray | None = None) -> Histories:
        """From parallel arrays of user rows and item rows (and times: oldest first; else the given order)."""
        order = np.lexsort((times, users)) if times is not None else np.argsort(users, kind="stable")
        counts = np.bincount(users, minlength=n_users)
        return cls(np.concatenate([[0], np.cumsum(counts)]), items[order])

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def of(self, user: int, limit: int | None = None) -> np.ndarray:
        start, end = self.indptr[user], self.indptr[user + 1]
        if limit is not None:
            start = max(start, end - limit)
        return self.items[start:end]

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def keys(self, n_items: int) -> np.ndarray:
        """Sorted user * n_items + item keys of every (user, item) pair, for membership tests."""
        users = np.repeat(np.arange(len(self)), self.lengths())
        return np.sort(users * n_items + self.items)


def contains(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Whether each query key is in the sorted ``keys``."""
    if not len(keys):
        return np.zeros(query.shape, dtype=bool)
    at = np.searchsorted(keys, query).clip(max=len(keys) - 1)
    return keys[at] == query


class NegativeSampler:
    """Uniform negatives among ``candidates`` (catalogue rows with training interactions), redrawn (a few times)
    where the user has interacted with the drawn item."""

    def __init__(self, candidates: np.ndarray, seen_keys: np.ndarray, n_items: int, tries: int = 5) -> None:
        self.candidates, self.seen_keys, self.n_items, self.tries = candidates, seen_keys, n_items, tries

    def __call__(self, users: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """[len(users), count] item rows."""
        draws = self.candidates[rng.integers(0, len(self.candidates), (len(users), count))]
        for _ in range(self.tries):
            seen = contains(self.seen_keys, users[:, None] * self.n_items + draws)
            if not seen.any():
                break
            draws[seen] = self.candidates[rng.integers(0, len(self.candidates), int(seen.sum()))]
        return draws
