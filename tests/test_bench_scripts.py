"""The clustering and per-domain benchmark scripts, end to end on the tiny encoder and tiny copies of the data layout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import (NEGATIVE, POSITIVE, SUPPORT_DIALOGUES, SUPPORT_KB, SUPPORT_QUESTIONS, quick_train, write_csv,
                      write_jsonl)

ROOT = Path(__file__).resolve().parents[1]
HOTEL = [("酒店早餐很好", "1"), ("酒店服务很专业", "1"), ("酒店早餐很难吃", "0"), ("酒店服务太慢", "0")]


def _reviews(others: int, hotels: int) -> list[tuple[str, str, str]]:
    """(cat, label, review) rows in the online_shopping_10_cats layout: two product categories, then hotels."""
    rows = [("english" if t.isascii() else "中文", "1", t) for t in POSITIVE]
    rows += [("english" if t.isascii() else "中文", "0", t) for t in NEGATIVE]
    return (rows * 10)[:others] + [("酒店", label, t) for t, label in HOTEL * 10][:hotels]


def _run_script(*args: str) -> None:
    readme = (ROOT / "README.md").read_bytes()
    result = subprocess.run([sys.executable, *args, "--no-readme"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert (ROOT / "README.md").read_bytes() == readme


def test_bench_cluster(tmp_path: Path, tiny_encoder: Path) -> None:
    data = write_csv(tmp_path / "test.csv", ["cat", "label", "review"], _reviews(24, 12) + [("中文", "1", " ")])
    report = tmp_path / "bench_cluster.json"
    _run_script("scripts/bench_cluster.py", "--data", str(data), "--base", str(tiny_encoder), "--rows", "30",
                "--report", str(report))
    r = json.loads(report.read_text(encoding="utf-8"))
    assert (r["file_rows"], r["rows"], r["categories"], r["k"]) == (37, 30, 3, 3)  # the blank review is skipped
    for method in ("ours", "tfidf"):
        assert -1 <= r[method]["adjusted_rand_index"] <= 1 and 1 / 3 <= r[method]["purity"] <= 1
        assert r[method]["wall_time_s"] >= 0
    assert r["ours"]["encoder"] == str(tiny_encoder) and r["tfidf"]["features"] == "char 1-3-grams"


def test_bench_domain(tmp_path: Path, tiny_encoder: Path) -> None:
    data_dir = tmp_path / "data"
    for split, (others, hotels) in {"train": (48, 30), "valid": (12, 4), "test": (12, 8)}.items():
        write_csv(data_dir / f"{split}.csv", ["cat", "label", "review"], _reviews(others, hotels))
    report, work = tmp_path / "bench_domain.json", tmp_path / "work"
    _run_script("scripts/bench_domain.py", "--model", str(tiny_encoder), "--data-dir", str(data_dir),
                "--train-examples", "40", "--examples", "20", "--max-steps", "2", "--work", str(work),
                "--report", str(report))
    r = json.loads(report.read_text(encoding="utf-8"))
    assert {k: v["rows"] for k, v in r["parts"].items()} == {
        "old_train": 48, "old_valid": 12, "old_test": 12, "new_train": 30, "new_test": 8}
    assert set(r["accuracy"]) == {"no_finetune", "finetuned", "scratch", "tfidf"}
    assert all(0 <= a <= 1 for run in r["accuracy"].values() for a in run.values())
    after = r["finetuned"]["metrics"]["after"]
    assert (after["new_domain"]["examples"], after["old_domain"]["examples"]) == (8, 12)
    assert r["source"]["train_rows_available"] == 48 and r["source"]["valid_examples"] == 12
    # (b) and (c) train on the same 20 hotel rows; the TF-IDF baseline is fitted on them too
    for run in ("finetuned", "scratch"):
        assert r[run]["train_examples"] + r[run]["valid_examples"] == 20 and r[run]["steps"] == 2
    assert r["tfidf"]["train_examples"] == 20 and r["scratch"]["metrics"]["test"]["examples"] == 8
    assert sorted(p.name for p in work.iterdir()) == ["data", "finetuned", "finetuned.train", "scratch",
                                                      "scratch.train", "source", "source.train"]


def test_bench_multitask(tmp_path: Path, tiny_encoder: Path) -> None:
    data_dir = tmp_path / "data"
    for split, rows in {"train": 40, "valid": 12, "test": 12}.items():
        write_csv(data_dir / f"{split}.csv", ["cat", "label", "review"], _reviews(rows, 0))
    report, work = tmp_path / "bench_multitask.json", tmp_path / "work"
    _run_script("scripts/bench_multitask.py", "--model", str(tiny_encoder), "--data-dir", str(data_dir),
                "--train-examples", "30", "--max-steps", "2", "--seeds", "1", "2", "--work", str(work),
                "--report", str(report))
    r = json.loads(report.read_text(encoding="utf-8"))
    assert [run["seed"] for run in r["runs"]] == [1, 2]
    for run in r["runs"]:
        assert set(run["single"]) == set(run["joint"]["metrics"]) == {"sentiment", "category"}
        for name, s in run["single"].items():  # both ways see the same rows
            assert s["train_examples"] == run["joint"]["tasks"][name]["train_examples"] <= 30
            assert s["steps"] == 1 and s["metrics"]["test"]["examples"] == 12  # one batch of 32 per epoch
            assert 0 <= run["joint"]["metrics"][name]["test"]["accuracy"] <= 1
        assert run["joint"]["steps"] == 2 and run["joint"]["wall_time_s"] > 0  # each task's batch once
        joint = work / f"seed-{run['seed']}" / "joint"
        assert sorted(p.name for p in joint.iterdir()) == ["category", "sentiment"]
    # --resume reuses a saved seed whose settings match (its wall times come back unchanged)
    _run_script("scripts/bench_multitask.py", "--model", str(tiny_encoder), "--data-dir", str(data_dir),
                "--train-examples", "30", "--max-steps", "2", "--seeds", "2", "--work", str(work),
                "--report", str(report), "--resume")
    assert json.loads(report.read_text(encoding="utf-8"))["runs"] == r["runs"][1:]


def test_bench_chat(tmp_path: Path, tiny_encoder: Path, tiny_lm: Path) -> None:
    data = tmp_path / "support"
    write_jsonl(data / "kb.jsonl", SUPPORT_KB)
    write_jsonl(data / "train.jsonl", SUPPORT_DIALOGUES)
    for split in ("valid", "test"):
        write_jsonl(data / f"{split}.jsonl", SUPPORT_QUESTIONS)
    report = tmp_path / "bench_chat.json"
    _run_script("scripts/bench_chat.py", "--model", str(tiny_lm), "--encoder", str(tiny_encoder), "--data-dir",
                str(data), "--max-steps", "2", "--max-new-tokens", "4", "--speed-repeats", "1", "--ablation",
                "--out", str(tmp_path / "bot"), "--report", str(report), "--lora.layers=null")
    r = json.loads(report.read_text(encoding="utf-8"))
    assert (r["answerable"], r["out_of_kb"], r["kb_entries"]) == (2, 2, 4)
    for run in ("ours", "base", "no_lora", "ours_validation"):
        assert r[run]["questions"] == 2 and 0 <= r[run]["key_fact_rate"] <= 1
    assert all(reply["sources"] == [] for reply in r["base"]["replies"])  # the baseline retrieves nothing
    assert all(len(reply["sources"]) == 3 for reply in r["ours"]["replies"])
    assert 0 <= r["recall"] <= 1 and 0 <= r["handoff_rate"] <= 1 and r["training"]["steps"] == 2
    assert r["speed"]["stream_tokens_per_s"] > 0 and r["speed"]["generate_tokens_per_s"] > 0
    beams = yaml.safe_load((ROOT / "configs/support_chat.yaml").read_text())["generation"]["num_beams"]
    assert r["num_beams"] == beams and ("ours_validation_greedy" in r) == (beams > 1)  # decoded as the config says

    # --trained measures the same chat directory again, without training; the card gives the training figures
    mtime = (tmp_path / "bot" / "adapter_model.safetensors").stat().st_mtime_ns
    _run_script("scripts/bench_chat.py", "--model", str(tiny_lm), "--encoder", str(tiny_encoder), "--data-dir",
                str(data), "--max-new-tokens", "4", "--speed-repeats", "1", "--out", str(tmp_path / "bot"),
                "--report", str(report), "--trained")
    again = json.loads(report.read_text(encoding="utf-8"))
    assert (tmp_path / "bot" / "adapter_model.safetensors").stat().st_mtime_ns == mtime
    assert again["training"]["reused"] and again["training"]["steps"] == 2
    assert again["perplexity"] == r["perplexity"] and again["recall"] == r["recall"]
    assert [x["reply"] for x in again["ours"]["replies"]] == [x["reply"] for x in r["ours"]["replies"]]


def test_bench_serve(tmp_path: Path, tiny_encoder: Path, sentiment_csv: Path) -> None:
    quick_train("review_sentiment", sentiment_csv, tmp_path / "model", tiny_encoder, columns={"text": "review"},
                epochs=1)
    report = tmp_path / "bench_serve.json"
    _run_script("scripts/bench_serve.py", "--model", str(tmp_path / "model"), "--data", str(sentiment_csv),
                "--requests", "6", "--batch", "4", "--batches", "2", "--report", str(report))
    r = json.loads(report.read_text(encoding="utf-8"))
    assert (r["single"]["http"]["calls"], r["single"]["python"]["calls"], r["batch"]["http"]["calls"]) == (6, 6, 2)
    for part in ("single", "batch"):
        python, http = r[part]["python"], r[part]["http"]
        assert 0 < python["median_ms"] <= python["p95_ms"] and 0 < http["median_ms"] <= http["p95_ms"]
        assert r[part]["ratio_median"] == round(http["median_ms"] / python["median_ms"], 2)
    assert r["task"] == "review_sentiment" and r["server_startup_s"] > 0
