"""The cross-task report: every task's table and figures, with the baseline's beside them, for each kind of task
(text classification, fraud, recommendation, chat); the numbers are the models' own evaluation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import (RECO_COLUMNS, fit_tiny_fraud, fit_tiny_reco, fraud_records, quick_train, support_files,
                      train_tiny_chat)

FIGURES = {"text classification": ["confusion_matrix.png"], "fraud": ["pr_curve.png", "roc_curve.png"],
           "recommendation": ["ndcg_at_k.png"], "chat": ["rates.png"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path, tiny_lm: Path, sentiment_csv: Path) -> dict:
    """One tiny model of each kind and the suite file over them; the training summaries to check against."""
    root = tmp_path_factory.mktemp("suite")
    quick_train("review_sentiment", sentiment_csv, root / "sentiment", tiny_encoder, columns={"text": "review"})
    quick_train("product_classification", sentiment_csv, root / "category", tiny_encoder,
                columns={"text": "review", "label": "cat"})
    for folder in ("fraud", "ecod", "reco"):
        (root / folder).mkdir()
    fraud, fraud_summary = fit_tiny_fraud(root / "fraud", fraud_records(3000))
    fraud.save(root / "fraud" / "task")
    ecod, _ = fit_tiny_fraud(root / "ecod", fraud_records(2000, seed=1), mode="unsupervised", detector="ecod")
    ecod.save(root / "ecod" / "task")
    fraud_records(600, seed=11).to_csv(root / "fraud_test.csv", index=False)
    _, reco_summary, reco_paths = fit_tiny_reco(root / "reco", tiny_encoder)
    files = support_files(root / "support")
    train_tiny_chat(root / "chat", tiny_lm, tiny_encoder, files)
    fraud_split = {"train": str(root / "fraud" / "records.csv"), "time": "minute", "split": "temporal",
                   "test_fraction": 0.2}  # as fit_tiny_fraud trained it
    reco_split = {**{k: str(v) for k, v in reco_paths.items()}, "valid_fraction": 0.15}  # as fit_tiny_reco
    spec = {"out": str(root / "report"), "baseline": "classical", "tasks": [
        {"name": "sentiment", "model": str(root / "sentiment"), "data": str(sentiment_csv)},
        {"name": "category", "model": str(root / "category"), "data": str(sentiment_csv)},
        {"name": "fraud", "model": str(root / "fraud" / "task"), "data": str(root / "fraud_test.csv")},
        {"name": "fraud-split", "model": str(root / "fraud" / "task"), "data": fraud_split},
        {"name": "fraud-ecod", "model": str(root / "ecod" / "task"), "data": str(root / "fraud_test.csv")},
        {"name": "reco", "model": str(root / "reco" / "task"), "data": reco_split},
        {"name": "chat", "model": str(root / "chat"), "data": str(files["questions"]), "limit": 1,
         "max_new_tokens": 8},
    ]}
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return {"suite": path, "root": root, "fraud": fraud_summary, "reco": reco_summary, "reco_split": reco_split,
            "questions": files["questions"]}


@pytest.fixture(scope="module")
def report(built: dict) -> dict:
    """The suite run once through the CLI; the parsed report.json."""
    from ecomnlp.cli import main

    main(["evaluate", "--suite", str(built["suite"])])
    return json.loads((built["root"] / "report" / "report.json").read_text(encoding="utf-8"))


def by_name(report: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in report["tasks"]}


def test_suite_report_has_every_task_table_and_figures(built: dict, report: dict) -> None:
    out = built["root"] / "report"
    assert [t["name"] for t in report["tasks"]] == ["sentiment", "category", "fraud", "fraud-split", "fraud-ecod",
                                                    "reco", "chat"]
    markdown, page = (out / "report.md").read_text(), (out / "index.html").read_text()
    for entry in report["tasks"]:
        name, ours, base = entry["name"], entry["ours"], entry["baseline"]
        assert "skipped" not in base, base
        assert (out / name / "metrics.json").exists() and f"## {name} — `{ours['task']}`" in markdown
        assert ours["figures"] == base["figures"] == FIGURES[entry["kind"]]
        for figure in FIGURES[entry["kind"]]:
            for path in (f"{name}/{figure}", f"{name}/baseline/{figure}"):
                assert (out / path).stat().st_size > 1000
                assert f"'{path}'" in page and f"(./{path})" in markdown
        assert len(entry["table"]) >= 3
        for metric in entry["table"]:  # every row of the table, in both files
            row = next(r for r in markdown.splitlines() if r.startswith(f"| {metric} |"))
            assert f"<td>{metric}</td>" in page and row.count("|") == 4
    text = by_name(report)["sentiment"]
    for who in ("ours", "baseline"):
        assert 0.0 <= text[who]["accuracy"] <= 1.0 and text[who]["examples"] == 48
    assert text["baseline"]["name"] == "TF-IDF + logistic regression"
    assert f"| accuracy | {text['ours']['accuracy']:.4f} | {text['baseline']['accuracy']:.4f} |" in markdown
    assert len(text["explanations"]) == 3
    for x in text["explanations"]:
        assert x["tokens"] and x["tokens"][0]["token"] in page and x["label"] in text["ours"]["per_class"]


def test_fraud_numbers_are_the_models_own_evaluation(built: dict, report: dict) -> None:
    import ecomnlp
    from ecomnlp.tabular import read_frame

    entries = by_name(report)
    model = ecomnlp.load(built["root"] / "fraud" / "task")
    expected = model.evaluate(read_frame(built["root"] / "fraud_test.csv"))
    ours = entries["fraud"]["ours"]
    assert {k: ours[k] for k in expected} == expected
    assert ours["at_threshold"]["threshold"] == model.threshold
    # the test split of the task's data settings is the training run's own test split
    split = entries["fraud-split"]
    for key, value in built["fraud"]["metrics"]["test"].items():
        assert split["ours"][key] == (pytest.approx(value) if not isinstance(value, dict) else value)
    assert split["ours"]["data"].startswith("latest 20% of")
    # supervised: logistic regression on the task's numeric features; x0 > 2.17 is linearly separable
    base = split["baseline"]
    assert base["name"] == "logistic regression" and base["threshold_chosen_on"] == "valid records"
    assert base["train_examples"] == built["fraud"]["splits"]["train"]["rows"] and base["auroc"] > 0.95
    assert entries["fraud"]["baseline"]["threshold_chosen_on"] == "train records"
    unsupervised = entries["fraud-ecod"]["baseline"]
    assert unsupervised["name"] == "PyOD IsolationForest" and 0 <= unsupervised["auroc"] <= 1
    # the highest-scored records, explained with the fields that raised their score
    top = entries["fraud"]["explanations"]
    assert [x["score"] for x in top] == sorted((x["score"] for x in top), reverse=True) and top[0]["label"] == 1
    assert top[0]["explanation"][0]["field"] == "x0"
    markdown = (built["root"] / "report" / "report.md").read_text()
    assert f"| at_threshold/tp | {ours['at_threshold']['tp']} |" in markdown and "| record | score |" in markdown


def test_recommendation_numbers_are_the_models_own_evaluation(built: dict, report: dict) -> None:
    import numpy as np

    import ecomnlp
    from ecomnlp.tasks.recommendation import RecoData, load_reco_splits

    entry = by_name(report)["reco"]
    ours, base = entry["ours"], entry["baseline"]
    trained = built["reco"]["metrics"]["test"]  # the training run's test metrics, at k = 5
    for name in ("ndcg", "hit_rate", "precision", "recall"):
        assert ours[f"{name}@5"] == pytest.approx(trained[f"{name}@5"], abs=1e-6)
    model = ecomnlp.load(built["root"] / "reco" / "task")
    splits = load_reco_splits(RecoData(**built["reco_split"], columns=RECO_COLUMNS))
    assert ours["ndcg@20"] == pytest.approx(model.evaluate(splits.frames["test"], 20)["ndcg@20"])
    # most popular: each item's training interactions (training and validation rows), the same protocol
    known = np.concatenate([splits.frames["train"]["item"], splits.frames["valid"]["item"]])
    counts = [int((known == item).sum()) for item in model.item_ids]
    assert model.popularity().tolist() == counts
    assert base["name"] == "most popular" and base["train_examples"] == len(known)
    assert base["auc"] < ours["auc"]  # the two groups of users like different halves: popularity cannot tell


def test_chat_numbers_are_the_bots_own_evaluation(built: dict, report: dict) -> None:
    import ecomnlp
    from ecomnlp.chat_data import load_questions
    from ecomnlp.chatbot import evaluate_bot

    entry = by_name(report)["chat"]
    bot = ecomnlp.load(built["root"] / "chat")
    questions = load_questions(built["questions"])
    expected = evaluate_bot(bot, questions, max_new_tokens=8, replies=1)
    assert {k: entry["ours"][k] for k in expected} == expected
    bot.use_adapter = False
    assert {k: entry["baseline"][k] for k in expected} == evaluate_bot(bot, questions, max_new_tokens=8, replies=1)
    card = json.loads((built["root"] / "chat" / "card.json").read_text(encoding="utf-8"))
    assert expected["recall@2"] == card["metrics"]["retrieval"]["recall@2"]  # as training measured it
    assert (expected["questions"], expected["out_of_kb"], expected["replies"]) == (2, 2, 1)
    hits = bot.retriever.search_many([q.text for q in questions], 1)
    handed = [h[0].score < bot.threshold for h in hits]
    assert expected["handoff_rate"] == sum(handed[2:]) / 2 and expected["false_handoff_rate"] == sum(handed[:2]) / 2


def test_key_fact_matching() -> None:
    from ecomnlp.chatbot import states

    assert states("Returns are free within  30\u2011Day windows.", "30-day")
    assert states("支持7天无理由退货。", "7天无理由退货") and not states("Within 14 days.", "30 days")


def test_baseline_figures_match_a_direct_tfidf_fit(built: dict, report: dict) -> None:
    """The baseline column is TF-IDF + LR fitted on the task's training file, on the same test rows."""
    import torch

    import ecomnlp
    from ecomnlp.baselines import tfidf_logits
    from ecomnlp.data import encode_targets, load_rows

    model = ecomnlp.load(built["root"] / "sentiment")
    rows = load_rows(model.card["training"]["train_file"], model.task, model.card["columns"])
    targets = encode_targets(rows, model.task, "label")
    logits = tfidf_logits(rows.texts[0], targets, rows.texts[0], 2)
    expected = (logits.argmax(-1) == torch.tensor(targets)).float().mean().item()
    assert report["tasks"][0]["baseline"]["accuracy"] == pytest.approx(expected)


def test_no_baseline_and_a_missing_training_file_say_why(built: dict, tmp_path: Path) -> None:
    import shutil

    from ecomnlp.report import evaluate_suite

    fraud = tmp_path / "fraud"
    shutil.copytree(built["root"] / "fraud" / "task", fraud)
    card = json.loads((fraud / "card.json").read_text())
    card["training"]["splits"]["train"]["source"] = str(tmp_path / "gone.csv")
    (fraud / "card.json").write_text(json.dumps(card))
    spec = {"out": str(tmp_path / "out"), "tasks": [
        {"name": "fraud", "model": str(fraud), "data": str(built["root"] / "fraud_test.csv")}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(spec))
    entry = evaluate_suite(tmp_path / "suite.yaml")["tasks"][0]
    assert entry["baseline"] == {"skipped": f"training file {str(tmp_path / 'gone.csv')!r} is not available here"}
    assert "gone.csv' is not available here." in (tmp_path / "out" / "report.md").read_text()
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({**spec, "baseline": "none"}))
    assert evaluate_suite(tmp_path / "suite.yaml")["tasks"][0]["baseline"] == {"skipped": "baseline: none"}


def test_suite_errors_name_the_problem(built: dict, tmp_path: Path) -> None:
    from ecomnlp.data import DataError
    from ecomnlp.report import evaluate_suite

    def suite(**spec) -> Path:
        path = tmp_path / "suite.yaml"
        path.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), **spec}))
        return path

    with pytest.raises(ValueError, match="lists no tasks"):
        evaluate_suite(suite())
    with pytest.raises(ValueError, match=r"task 1 lacks \['data'\]"):
        evaluate_suite(suite(tasks=[{"name": "a", "model": "runs/a"}]))
    twice = {"name": "a", "model": "runs/a", "data": "x.csv"}
    with pytest.raises(ValueError, match=r"task names \['a'\] are used twice"):
        evaluate_suite(suite(tasks=[twice, twice]))
    with pytest.raises(ValueError, match="baseline must be classical or none, not 'tfid'"):
        evaluate_suite(suite(baseline="tfid", tasks=[twice]))
    # a test file without the task's label column: the file and the suite entry are named
    unlabelled = tmp_path / "unlabelled.csv"
    fraud_records(50).drop(columns="label").to_csv(unlabelled, index=False)
    fraud = str(built["root"] / "fraud" / "task")
    with pytest.raises(DataError, match=f"{unlabelled}: no label column 'label'") as info:
        evaluate_suite(suite(tasks=[{"name": "f", "model": fraud, "data": str(unlabelled)}]))
    assert info.value.__notes__ == [f"in {tmp_path / 'suite.yaml'}, task 1 (f)"]
    with pytest.raises(ValueError, match="data: .*unexpected keyword argument 'tset'"):
        evaluate_suite(suite(tasks=[{"name": "f", "model": fraud, "data": {"train": "x.csv", "tset": "y.csv"}}]))
    # a kind the report has no section for
    search = tmp_path / "search"
    search.mkdir()
    for name in ("item_features.json", "model.safetensors", "catalogue.safetensors"):
        (search / name).write_text("")
    (search / "card.json").write_text(json.dumps({"format_version": 1, "task": "search_ranking",
                                                  "kind": "search_ranking"}))
    with pytest.raises(ValueError, match="the report has no section for kind 'search_ranking'") as info:
        evaluate_suite(suite(tasks=[{"name": "s", "model": str(search), "data": "q.csv"}]))
    assert "task 1 (s)" in info.value.__notes__[0]
