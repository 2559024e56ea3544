"""Product clustering: k given or chosen by silhouette, typical items, top terms, report files, CLI."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ecomnlp
from conftest import NEGATIVE, POSITIVE, quick_train, write_csv
from ecomnlp.data import DataError

TEXTS = POSITIVE + NEGATIVE  # 12 distinct texts, Chinese and English


def test_k_given_or_chosen_by_silhouette(tiny_encoder: Path) -> None:
    fixed = ecomnlp.cluster(TEXTS, k=3, base=str(tiny_encoder))
    assert fixed.k == 3 and len(fixed.labels) == len(TEXTS) and set(fixed.labels) == {0, 1, 2}
    assert list(fixed.silhouette_by_k) == [3] and -1 <= fixed.silhouette <= 1
    assert sum(c["size"] for c in fixed.clusters) == len(TEXTS)
    assert np.allclose(np.linalg.norm(fixed.vectors, axis=1), 1, atol=1e-5)

    auto = ecomnlp.cluster(TEXTS, base=str(tiny_encoder))
    assert list(auto.silhouette_by_k) == list(range(2, len(TEXTS)))  # 2..min(20, n - 1)
    assert auto.silhouette == max(auto.silhouette_by_k.values()) == auto.silhouette_by_k[auto.k]
    assert len(set(auto.labels)) == auto.k
    assert ecomnlp.cluster(TEXTS, base=str(tiny_encoder)).labels == auto.labels  # seeded


def test_typical_items_belong_to_their_cluster(tiny_encoder: Path) -> None:
    result = ecomnlp.cluster(TEXTS, k=3, base=str(tiny_encoder), typical=2)
    for c in result.clusters:
        members = [i for i, label in enumerate(result.labels) if label == c["cluster"]]
        assert len(c["typical"]) == min(2, c["size"]) and c["size"] == len(members)
        assert all(t["index"] in members and t["text"] == TEXTS[t["index"]] for t in c["typical"])
        centroid = result.vectors[members].mean(0)
        nearest = min(members, key=lambda i: np.linalg.norm(result.vectors[i] - centroid))
        assert c["typical"][0]["index"] == nearest


def test_top_terms_contrast_a_cluster_with_the_rest() -> None:
    from ecomnlp.clustering import terms_of, top_terms

    assert terms_of("Apple iPhone 15 手机壳 for the car，书") == ["apple", "iphone", "15", "手机", "机壳", "car", "书"]
    texts = ["手机壳 透明", "手机壳 防摔", "red tea kettle", "steel tea kettle", "手机 tea"]
    terms = top_terms(texts, np.array([0, 0, 1, 1, 2]), k=3, n=2)
    # in every text of its cluster and nowhere else comes first; a term the rest also has comes later
    assert terms[0] == ["机壳", "透明"] and terms[1] == ["kettle", "red"] and set(terms[2]) <= {"手机", "tea"}


def test_adapter_of_a_trained_task_changes_the_vectors(tmp_path: Path, tiny_encoder: Path, sentiment_csv: Path) -> None:
    from ecomnlp.backbone import Backbone
    from ecomnlp.data import tokenize
    from ecomnlp.predictor import embed

    quick_train("review_sentiment", sentiment_csv, tmp_path / "sentiment", tiny_encoder, columns={"text": "review"})
    tuned = ecomnlp.cluster(TEXTS, k=2, model=tmp_path / "sentiment")
    base = ecomnlp.cluster(TEXTS, k=2, base=str(tiny_encoder))
    assert tuned.encoder == {"model": str(tmp_path / "sentiment"), "base": str(tiny_encoder)}
    assert not np.allclose(tuned.vectors, base.vectors, atol=1e-3)
    # adapter=None runs the base alone, even on a backbone that holds adapters
    trained = ecomnlp.load(tmp_path / "sentiment")
    ids = tokenize(trained.backbone.tokenizer, [TEXTS], 128)
    plain = embed(Backbone(tiny_encoder), None, ids, 5)
    assert torch.allclose(embed(trained.backbone, None, ids, 5), plain, atol=1e-6)
    assert not torch.allclose(embed(trained.backbone, trained.adapter, ids, 5), plain, atol=1e-3)


@pytest.mark.parametrize("k", ["3", "auto"])
def test_cli_writes_the_report(tmp_path: Path, tiny_encoder: Path, k: str, capsys: pytest.CaptureFixture[str]) -> None:
    from ecomnlp.cli import main

    titles = TEXTS[:6] + [" "] + TEXTS[6:]  # file row 7 is blank: skipped
    data = write_csv(tmp_path / "products.csv", ["title", "price"], [(t, i) for i, t in enumerate(titles)])
    out = tmp_path / "reports" / "clusters"
    main(["cluster", "--data", str(data), "--text", "title", "--base", str(tiny_encoder), "--k", k, "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["clusters.csv", "clusters.json", "map.png"]  # no temp files
    with (out / "clusters.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["row"]) for r in rows] == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13]
    assert [r["text"] for r in rows] == TEXTS
    report = json.loads((out / "clusters.json").read_text(encoding="utf-8"))
    assert {int(r["cluster"]) for r in rows} == set(range(report["k"]))
    if k == "3":
        assert report["k"] == 3
    assert sum(c["size"] for c in report["clusters"]) == len(TEXTS)
    for c in report["clusters"]:  # typical items by file row
        assert all(next(r for r in rows if int(r["row"]) == t["row"])["cluster"] == str(c["cluster"]) for t in c["typical"])
    assert (out / "map.png").read_bytes().startswith(b"\x89PNG")
    printed = capsys.readouterr().out
    assert f"k={report['k']}" in printed and f"report: {out}/clusters.json" in printed


def test_missing_text_column_names_file_and_column(tmp_path: Path, tiny_encoder: Path) -> None:
    from ecomnlp.cli import main

    data = write_csv(tmp_path / "products.csv", ["title"], [(t,) for t in TEXTS])
    with pytest.raises(DataError, match=r"products\.csv: no column 'name' .* columns \['title'\]"):
        main(["cluster", "--data", str(data), "--text", "name", "--base", str(tiny_encoder), "--out", str(tmp_path)])


def test_k_out_of_range_is_refused_before_loading_a_model() -> None:
    with pytest.raises(ValueError, match="k must be between 2 and 11"):
        ecomnlp.cluster(TEXTS, k=12, base="no-such-model")
    with pytest.raises(ValueError, match="at least 3 texts"):
        ecomnlp.cluster(["same", "same", "same"], base="no-such-model")


def test_cluster_help_imports_no_torch() -> None:
    code = ("import sys\nfrom ecomnlp.cli import main\ntry:\n    main(['cluster', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in result.stdout and "--text" in result.stdout and "--max_k" in result.stdout
