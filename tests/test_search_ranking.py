"""Search ranking on a tiny synthetic catalogue: judgments with graded (text) labels, the task's adapter on queries
and products, train -> save -> load -> rank with identical results, pointwise and pairwise losses, and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import NEGATIVE, POSITIVE

ROOT = Path(__file__).resolve().parents[1]


def catalogue(tmp: Path) -> dict[str, Path]:
    """Products are the POSITIVE and NEGATIVE texts (three brands each); a query is a product's own text: that
    product is an exact match (E), the same polarity's products substitutes (S), the other polarity irrelevant (I)."""
    texts = POSITIVE + NEGATIVE
    products = pd.DataFrame({"sku": [f"p{i}" for i in range(len(texts))], "name": texts,
                             "brand": [["acme", "zen", None][i % 3] for i in range(len(texts))]})
    rows = []
    for own, query in enumerate(texts):
        same = [i for i in range(len(texts)) if (i < len(POSITIVE)) == (own < len(POSITIVE)) and i != own]
        other = [i for i in range(len(texts)) if (i < len(POSITIVE)) != (own < len(POSITIVE))]
        rows += [(query, f"p{own}", "E")] + [(query, f"p{i}", "S") for i in same[:2]]
        rows += [(query, f"p{i}", "I") for i in other[:3]]
    paths = {"judgments": tmp / "judgments.csv", "items": tmp / "products.csv"}
    pd.DataFrame(rows, columns=["search_term", "sku", "esci"]).to_csv(paths["judgments"], index=False)
    products.to_csv(paths["items"], index=False)
    return paths


COLUMNS = {"query": "search_term", "item": "sku", "label": "esci"}
GAINS = {"E": 3, "S": 1, "C": 1, "I": 0}
FEATURES = {"categorical": {"brand": {}}, "templates": {"text": "{name}"}}


def trainer(epochs: int = 8):
    from ecomnlp.config import TrainerSettings

    return TrainerSettings(max_epochs=epochs, lr=1e-2, weight_decay=0.0, progress_bar=False, accelerator="cpu",
                           devices=1, patience=50, log_every_n_steps=5, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path):
    import ecomnlp
    from ecomnlp.tasks.search_ranking import SearchData, SearchNetwork, fit_search

    tmp = tmp_path_factory.mktemp("search")
    paths = catalogue(tmp)
    data = SearchData(judgments=str(paths["judgments"]), items=str(paths["items"]), columns=COLUMNS, gains=GAINS,
                      valid_fraction=0.0, test_fraction=0.2, batch_size=4)  # 2 validation queries: too noisy
    network = SearchNetwork(dim=16, text_dim=16, negatives=4, text="adapter")
    model, summary = fit_search(data, FEATURES, str(tiny_encoder), network, trainer=trainer(40), work_dir=tmp / "run",
                                k=5)
    model.save(tmp / "task")
    return model, summary, ecomnlp.load(tmp / "task"), tmp / "task"


def test_search_end_to_end_and_reload(trained) -> None:
    model, summary, loaded, task = trained
    assert sorted(p.name for p in task.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "card.json", "catalogue.safetensors",
        "item_features.json", "model.safetensors"]
    card = json.loads((task / "card.json").read_text())
    assert card["kind"] == "search_ranking" and card["lora"]["r"] == 8
    m = summary["metrics"]["test"]
    assert m["queries"] == 2 and 0 <= m["ndcg@5"] <= 1 and 0 <= m["map"] <= 1 and 0 <= m["auc"] <= 1
    query = POSITIVE[0]
    got, fresh = loaded.rank(query, k=5), model.rank(query, k=5)
    assert [r["item"] for r in got] == [r["item"] for r in fresh]
    assert np.allclose([r["score"] for r in got], [r["score"] for r in fresh], atol=1e-6)
    assert [r["score"] for r in got] == sorted([r["score"] for r in got], reverse=True)
    scores = loaded.score(query, ["p0", "p11", "missing"])
    assert np.isnan(scores[2]) and 0 <= scores[0] <= 1
    assert len(loaded.rank_many([query, NEGATIVE[1]], k=3)) == 2


def test_training_queries_find_their_own_group(trained) -> None:
    """A training query's relevant products (its own and same-polarity ones) rank above the other polarity's (the
    tiny random encoder gives held-out queries nothing to generalise from)."""
    from ecomnlp.tasks.search_ranking import _split_queries, load_judgments

    model, _, _, task = trained
    frame = load_judgments(task.parent / "judgments.csv", COLUMNS, GAINS)
    train, _ = _split_queries(frame, 0.2, 42)
    texts = POSITIVE + NEGATIVE
    shares = []
    for i, text in enumerate(texts):
        if text not in set(train["query"]):
            continue
        top = [int(r["item"][1:]) for r in model.rank(text, k=6)]
        shares.append(np.mean([(j < len(POSITIVE)) == (i < len(POSITIVE)) for j in top]))
    print("same-group share of the top 6:", shares)
    assert len(shares) == 10 and np.mean(shares) >= 0.7  # 0.5 at random


def test_text_labels_need_gains(tmp_path: Path) -> None:
    from ecomnlp.data import DataError
    from ecomnlp.tasks.search_ranking import load_judgments

    paths = catalogue(tmp_path)
    with pytest.raises(DataError, match="is not a number"):
        load_judgments(paths["judgments"], COLUMNS)
    frame = load_judgments(paths["judgments"], COLUMNS, GAINS)
    assert set(frame["gain"]) == {3.0, 1.0, 0.0}
    no_label = load_judgments(paths["judgments"], {"query": "search_term", "item": "sku", "label": "absent"})
    assert set(no_label["gain"]) == {1.0}


@pytest.mark.parametrize("loss, scorer, text", [("bpr", "mlp", "frozen"), ("softmax", "dot", "frozen")])
def test_losses_scorers_and_frozen_text(tmp_path: Path, tiny_encoder: Path, loss: str, scorer: str, text: str) -> None:
    from ecomnlp.tasks.search_ranking import SearchData, SearchNetwork, fit_search

    paths = catalogue(tmp_path)
    data = SearchData(judgments=str(paths["judgments"]), items=str(paths["items"]), columns=COLUMNS, gains=GAINS,
                      valid_fraction=0.0, test_fraction=0.2, batch_size=32)
    network = SearchNetwork(dim=8, loss=loss, scorer=scorer, negatives=3, cross_negatives=2, text=text, hidden=[8])
    model, summary = fit_search(data, FEATURES, str(tiny_encoder), network, trainer=trainer(2),
                                work_dir=tmp_path / "r", k=5)
    assert "test" in summary["metrics"] and len(model.rank(POSITIVE[2], k=4)) == 4
    assert "lora" not in model.card


def test_cli_train_search(tmp_path: Path, tiny_encoder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ecomnlp.cli import main

    with pytest.raises(SystemExit) as info:  # the example config parses with this command's parser
        main(["train-search", "--config", str(ROOT / "configs" / "search_ranking.yaml"), "--print_config"])
    assert info.value.code in (0, None)
    paths = catalogue(tmp_path)
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(tmp_path / "task"), "model": str(tiny_encoder), "features": FEATURES,
        "data": {"judgments": str(paths["judgments"]), "items": str(paths["items"]), "columns": COLUMNS,
                 "gains": GAINS},
        "network": {"dim": 8, "text": "frozen"},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "progress_bar": False}}))
    capsys.readouterr()
    main(["train-search", "--config", str(config)])
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{\n"):])
    assert summary["metrics"]["test"]["queries"] > 0 and (tmp_path / "task" / "card.json").exists()
