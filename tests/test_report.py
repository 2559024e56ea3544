"""The cross-task report: every task's table and figures, with the baseline's beside them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import quick_train


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path, sentiment_csv: Path) -> Path:
    root = tmp_path_factory.mktemp("suite")
    quick_train("review_sentiment", sentiment_csv, root / "sentiment", tiny_encoder, columns={"text": "review"})
    quick_train("product_classification", sentiment_csv, root / "category", tiny_encoder,
                columns={"text": "review", "label": "cat"})
    spec = {"out": str(root / "report"), "baseline": "tfidf", "tasks": [
        {"name": "sentiment", "model": str(root / "sentiment"), "data": str(sentiment_csv)},
        {"name": "category", "model": str(root / "category"), "data": str(sentiment_csv)},
    ]}
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_suite_report_has_every_task_table_and_figures(suite: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ecomnlp.cli import main

    main(["evaluate", "--suite", str(suite)])
    out = suite.parent / "report"
    assert "index.html" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert [t["name"] for t in report["tasks"]] == ["sentiment", "category"]
    markdown, page = (out / "report.md").read_text(), (out / "index.html").read_text()
    for entry in report["tasks"]:
        name = entry["name"]
        for who in ("ours", "baseline"):
            assert 0.0 <= entry[who]["accuracy"] <= 1.0
            assert entry[who]["examples"] == 48
        assert entry["baseline"]["name"] == "TF-IDF + logistic regression"
        assert (out / name / "metrics.json").exists()
        for figure in ("confusion_matrix.png", "baseline/confusion_matrix.png"):
            assert (out / name / figure).stat().st_size > 1000
            assert f"{name}/{figure}" in page and f"./{name}/{figure}" in markdown
        assert f"## {name}" in markdown and f"{entry['ours']['accuracy']:.4f}" in markdown
        assert len(entry["explanations"]) == 3
        for x in entry["explanations"]:
            assert x["tokens"] and x["tokens"][0]["token"] in page
            assert x["label"] in entry["ours"]["per_class"]


def test_baseline_figures_match_a_direct_tfidf_fit(suite: Path) -> None:
    """The baseline column is TF-IDF + LR fitted on the task's training file, on the same test rows."""
    import torch

    import ecomnlp
    from ecomnlp.baselines import tfidf_logits
    from ecomnlp.data import encode_targets, load_rows
    from ecomnlp.report import evaluate_suite

    report = evaluate_suite(suite)
    model = ecomnlp.load(suite.parent / "sentiment")
    rows = load_rows(model.card["training"]["train_file"], model.task, model.card["columns"])
    targets = encode_targets(rows, model.task, "label")
    logits = tfidf_logits(rows.texts[0], targets, rows.texts[0], 2)
    expected = (logits.argmax(-1) == torch.tensor(targets)).float().mean().item()
    assert report["tasks"][0]["baseline"]["accuracy"] == pytest.approx(expected)


def test_suite_errors_name_the_problem(tmp_path: Path) -> None:
    from ecomnlp.report import evaluate_suite

    empty = tmp_path / "empty.yaml"
    empty.write_text("out: x\n")
    with pytest.raises(ValueError, match="lists no tasks"):
        evaluate_suite(empty)
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump({"tasks": [{"name": "a", "model": "runs/a"}]}))
    with pytest.raises(ValueError, match=r"task 1 lacks \['data'\]"):
        evaluate_suite(partial)
