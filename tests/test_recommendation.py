"""Recommendation: ranking metrics against hand-computed cases, the file formats (RecBole atomic, MovieLens), per-user
splits, negative sampling, and a tiny end-to-end run (train -> save -> load -> recommend) on synthetic interactions
whose answer is known: two groups of users, each liking its own half of the catalogue."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import (POSITIVE, RECO_COLUMNS as COLUMNS, RECO_USERS as N_USERS, fit_tiny_reco, reco_files as synthetic,
                      reco_trainer as trainer)

ROOT = Path(__file__).resolve().parents[1]


# --- metrics --------------------------------------------------------------------------------------------------

def test_ranking_metrics_match_hand_computed_values() -> None:
    from ecomnlp.ranking import ranking_metrics

    # query 0: top [5, 1, 7], relevant {1, 9}: one hit at rank 2
    # query 1: top [2, 3, 4], relevant {2, 4}: hits at ranks 1 and 3
    # query 2: nothing relevant: left out of every average
    top = [[5, 1, 7], [2, 3, 4], [0, 1, 2]]
    relevant = [[1, 9], [2, 4], []]
    m = ranking_metrics(top, relevant, k=3)
    d = [1 / math.log2(r + 1) for r in (1, 2, 3)]
    ndcg0 = d[1] / (d[0] + d[1])
    ndcg1 = (d[0] + d[2]) / (d[0] + d[1])
    assert m["queries"] == 2
    assert m["hit_rate@3"] == pytest.approx(1.0)
    assert m["precision@3"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert m["recall@3"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert m["ndcg@3"] == pytest.approx((ndcg0 + ndcg1) / 2, abs=1e-6)
    # MAP (Microsoft Recommenders): precision at each hit, summed, over the number of relevant items
    assert m["map"] == pytest.approx(((1 / 2) / 2 + (1 + 2 / 3) / 2) / 2)


def test_graded_ndcg_and_items_that_cannot_be_ranked() -> None:
    from ecomnlp.ranking import ranking_metrics

    # gains: row 3 -> 3, row 8 -> 1; ranked [8, 3]: DCG = 1/1 + 3/log2(3); ideal = 3 + 1/log2(3)
    m = ranking_metrics([[8, 3]], [{3: 3.0, 8: 1.0, 4: 0.0}], k=2)
    assert m["ndcg@2"] == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)), abs=1e-6)
    assert m["precision@2"] == 1.0 and m["recall@2"] == 1.0
    # a relevant item outside the catalogue (negative row) is never ranked but counts for recall
    m = ranking_metrics([[1, 2]], [[1, -2]], k=2)
    assert m["recall@2"] == pytest.approx(0.5) and m["hit_rate@2"] == 1.0


def test_top_k_leaves_out_excluded_rows_and_pads() -> None:
    from ecomnlp.ranking import top_k

    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, 0.2, 0.1, 0.0]])
    rows = top_k(scores, 3, [np.array([1]), np.array([0, 1, 2])])
    assert rows.tolist() == [[3, 2, 0], [3, -1, -1]]


def test_mean_auc_matches_hand_computed_and_torchmetrics() -> None:
    from torchmetrics.classification import BinaryAUROC

    from ecomnlp.ranking import mean_auc

    # query 0: relevant {0, 2}, candidates all but row 3 -> pairs (0>1 yes, 0>4 yes, 2>1 no, 2>4 tie) = 2.5 / 4
    scores = torch.tensor([[0.9, 0.5, 0.2, 5.0, 0.2], [0.1, 0.4, 0.3, 0.2, 0.0]])
    auc = mean_auc(scores, [[0, 2], [1]], [np.array([3]), np.array([], dtype=np.int64)])
    assert auc == pytest.approx((2.5 / 4 + 1.0) / 2)
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=200), (rng.random(200) < 0.2)
    expected = BinaryAUROC()(torch.from_numpy(s), torch.from_numpy(y.astype(int))).item()
    assert mean_auc(torch.from_numpy(s)[None], [np.flatnonzero(y)]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("kind", ["bce", "bpr", "softmax"])
def test_losses(kind: str) -> None:
    from ecomnlp.ranking import ranking_loss

    pos, neg = torch.tensor([2.0]), torch.tensor([[0.0, -1.0]])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = {"bce": -(math.log(sig(2)) + math.log(1 - sig(0)) + math.log(1 - sig(-1))) / 3,
                "bpr": -(math.log(sig(2)) + math.log(sig(3))) / 2,
                "softmax": -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))}[kind]
    assert ranking_loss(kind, pos, neg).item() == pytest.approx(expected, rel=1e-5)


# --- files, splits, negatives ---------------------------------------------------------------------------------

def test_recbole_atomic_and_movielens_formats(tmp_path: Path) -> None:
    from ecomnlp.interactions import read_interactions, read_table

    (tmp_path / "d.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                      "1\t10\t4\t100\n1\t11\t2\t50\n2\t10\t5\t70\n1\t10\t3\t200\n")
    (tmp_path / "d.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                     "10\tToy Story\t1995\tAnimation Comedy\n11\tunknown\tunkonwn\tunknown\n"
                                     "12\tLand Before Time III (1995)\tV\tAnimation\n")
    (tmp_path / "d.user").write_text("user_id:token\tage:token\tgender:token\n1\t24\tM\n2\t53\tF\n")
    d = read_interactions(tmp_path / "d.inter", tmp_path / "d.user", tmp_path / "d.item")
    assert list(d.frame.columns) == ["user", "item", "rating", "time"]
    assert len(d.frame) == 3  # the repeated (1, 10) pair keeps its latest row
    assert d.frame.set_index(["user", "item"]).loc[("1", "10"), "rating"] == 3
    items = d.items.set_index("item")
    assert items.loc["12", "title"] == "Land Before Time III" and items.loc["12", "release_year"] == 1995
    assert pd.isna(items.loc["11", "release_year"]) and pd.isna(items.loc["11", "title"])
    assert list(d.items["item"]) == ["10", "11", "12"]  # items without interactions stay in the catalogue

    (tmp_path / "u.data").write_text("1\t10\t4\t100\n2\t11\t3\t90\n")
    (tmp_path / "u.item").write_bytes("10|Amélie (2001)|01-Jan-2001||http://x|0|0|0|0|0|1|0|0|1|0|0|0|0|0|1|0|0|0|0\n"
                                      .encode("latin-1"))
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    d = read_interactions(tmp_path / "u.data", tmp_path / "u.user", tmp_path / "u.item")
    item = d.items.set_index("item").loc["10"]
    assert (item["title"], item["year"], item["genres"]) == ("Amélie", 2001, "Comedy|Drama|Romance")
    assert set(d.items["item"]) == {"10", "11"} and d.users.set_index("user").loc["2", "occupation"] == "other"

    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n")
    (tmp_path / "movies.dat").write_text("10::GoldenEye (1995)::Action|Adventure|Thriller\n")
    movies = read_table(tmp_path / "movies.dat")
    assert (movies["title"][0], movies["year"][0]) == ("GoldenEye", 1995)
    assert read_interactions(tmp_path / "ratings.dat").frame.iloc[0].tolist() == ["1", "10", 5, 978300760]


def test_combined_ratings_file_with_mapped_columns(tmp_path: Path) -> None:
    from ecomnlp.data import DataError
    from ecomnlp.interactions import read_interactions

    path = tmp_path / "ratings.csv"
    pd.DataFrame({"movieId": [1, 2, 1], "title": ["A", "B", "A"], "uid": [7, 7, 8], "stars": [4.0, 2.0, 5.0]}
                 ).to_csv(path, index=False)
    d = read_interactions(path, columns={"user": "uid", "rating": "stars"}, min_rating=3)
    assert d.frame[["user", "item"]].values.tolist() == [["7", "1"], ["8", "1"]]
    assert list(d.items.columns) == ["item", "title"] and list(d.items["item"]) == ["1"]
    with pytest.raises(DataError, match="no user column"):
        read_interactions(path)
    with pytest.raises(DataError, match="missing column 'who'"):
        read_interactions(path, columns={"user": "who"})


def test_stratified_split_per_user_is_seeded_and_follows_recommenders() -> None:
    from ecomnlp.interactions import split_per_user

    frame = pd.DataFrame({"user": np.repeat(["a", "b", "c"], [4, 8, 21]), "item": np.arange(33).astype(str),
                          "time": np.arange(33)})
    kept, held = split_per_user(frame, 0.25, "stratified", seed=42)
    assert kept.groupby("user").size().to_dict() == {"a": 3, "b": 6, "c": 16}  # round(0.75 n)
    assert set(kept.index).isdisjoint(held.index) and len(kept) + len(held) == 33
    again, _ = split_per_user(frame, 0.25, "stratified", seed=42)
    assert kept.index.equals(again.index)
    group = frame[frame.user == "c"].sample(frac=1, random_state=42)  # Recommenders' per-user shuffle
    assert list(kept[kept.user == "c"].index) == list(group.index[:16])
    _, latest = split_per_user(frame, 0.25, "temporal")
    assert latest.groupby("user")["time"].min().to_dict() == {"a": 3, "b": 10, "c": 28}


def test_negative_sampler_avoids_seen_items() -> None:
    from ecomnlp.interactions import Histories, NegativeSampler

    histories = Histories.build(np.array([0, 0, 0, 1]), np.array([0, 1, 2, 3]), 2)
    assert histories.of(0).tolist() == [0, 1, 2] and histories.of(0, limit=2).tolist() == [1, 2]
    sampler = NegativeSampler(np.arange(5), histories.keys(5), 5, tries=50)
    draws = sampler(np.array([0, 1] * 50), 4, np.random.default_rng(0))
    assert not np.isin(draws[0::2], [0, 1, 2]).any() and not (draws[1::2] == 3).any()


# --- end to end on synthetic data -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path):
    import ecomnlp

    tmp = tmp_path_factory.mktemp("reco")
    model, summary, paths = fit_tiny_reco(tmp, tiny_encoder)
    return model, summary, ecomnlp.load(tmp / "task"), tmp / "task", paths


def test_end_to_end_learns_the_groups_and_reloads_identically(trained) -> None:
    model, summary, loaded, task, _ = trained
    assert sorted(p.name for p in task.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "card.json", "catalogue.safetensors",
        "item_features.json", "model.safetensors", "user_features.json", "users.safetensors"]
    card = json.loads((task / "card.json").read_text())
    assert card["kind"] == "recommendation" and card["metrics"]["test"]["queries"] == N_USERS
    test = summary["metrics"]["test"]
    assert test["auc"] > 0.75 and test["hit_rate@5"] > 0.8  # popularity alone gives AUC ~0.5 here
    for user in ("u3", "u25"):
        got, fresh = loaded.recommend(user, k=5), model.recommend(user, k=5)
        assert [r["item"] for r in got] == [r["item"] for r in fresh]
        assert np.allclose([r["score"] for r in got], [r["score"] for r in fresh], atol=1e-6)
        assert not {r["item"] for r in got} & set(loaded.seen(user))  # seen items excluded
        group = range(12) if user == "u3" else range(12, 24)
        assert sum(int(r["item"][1:]) in group for r in got) >= 3
        assert [r["score"] for r in got] == sorted([r["score"] for r in got], reverse=True)
    scores = loaded.score("u3", ["i0", "i20", "nope"])
    assert np.allclose(scores[:2], model.score("u3", ["i0", "i20"])) and math.isnan(scores[2])
    assert 0 <= scores[0] <= 1 and 0 <= scores[1] <= 1
    for call in (lambda: loaded.score("u3", "i0"), lambda: loaded.recommend(None, history="i1"),
                 lambda: loaded.recommend("u3", exclude="i5")):  # one id string, not its characters
        with pytest.raises(TypeError, match="expected a list of ids, got the string 'i.': write \\['i.'\\]"):
            call()


def test_feature_pipelines_round_trip(trained) -> None:
    from ecomnlp.features import FeaturePipeline

    model, _, loaded, task, paths = trained
    users = pd.read_csv(paths["users"]).rename(columns={"uid": "user"})
    users["user"] = users["user"].astype(str)
    again = FeaturePipeline.load(task / "user_features.json")
    a, b = model.user_pipeline.transform(users), again.transform(users)
    assert torch.equal(a.numeric, b.numeric) and torch.equal(a.categorical, b.categorical)
    items = pd.read_csv(paths["items"]).rename(columns={"iid": "item"})
    a, b = model.item_pipeline.transform(items), loaded.item_pipeline.transform(items)
    assert torch.equal(a.numeric, b.numeric) and torch.equal(a.categorical, b.categorical) and a.texts == b.texts
    assert torch.equal(model.vectors, loaded.vectors)


def test_cold_start_users_nan_and_unseen_categories(trained) -> None:
    _, _, loaded, _, _ = trained
    history = ["i0", "i1", "i2", "i3"]
    new = loaded.recommend("someone-new", k=5, history=history, features={"age": float("nan"), "job": "zzz"})
    assert len(new) == 5 and not {r["item"] for r in new} & set(history)
    assert sum(int(r["item"][1:]) < 12 for r in new) >= 3  # placed by its history: the first group's items
    assert loaded.recommend(None, k=3, history=history) == loaded.recommend("other-new", k=3, history=history)
    empty = loaded.recommend("nobody", k=4)  # no history, no features: still a ranking
    assert len(empty) == 4
    known_other = loaded.recommend("u3", k=3, features={"age": None, "job": "never-seen"})
    assert len(known_other) == 3
    with_unknown = loaded.recommend("x", k=3, history=["i0", "not-an-item"])  # unknown history item ignored
    assert with_unknown == loaded.recommend("x", k=3, history=["i0"])
    scores = loaded.score(None, ["i0", "i13"], history=history)
    assert scores[0] > scores[1]


def test_new_items_join_the_catalogue(trained) -> None:
    from ecomnlp.data import DataError
    from ecomnlp.tasks.recommendation import load_recommendation

    _, _, _, task, _ = trained
    model = load_recommendation(task)
    before = len(model.item_ids)
    model.add_items([{"item": "fresh", "title": POSITIVE[0], "year": 1999}])
    assert len(model.item_ids) == before + 1 and model.vectors.shape[0] == before + 1
    assert not math.isnan(model.score("u3", ["fresh"])[0])
    with pytest.raises(DataError, match="already in the catalogue"):
        model.add_items([{"item": "i0", "title": "x"}])
    with pytest.raises(DataError, match=r"new item 2: no id \(1 such item\(s\)\)"):
        model.add_items([{"item": "a", "title": "x"}, {"item": None, "title": "y"}])
    with pytest.raises(DataError, match=r"new items with the same id: \['b'\]"):
        model.add_items([{"item": "b", "title": "x"}, {"item": "b", "title": "y"}])
    assert len(model.item_ids) == before + 1  # a refused batch adds nothing
    model.save(task.parent / "with-new-item")  # a loaded model saves again, adapter included
    again = load_recommendation(task.parent / "with-new-item")
    assert again.item_ids[-1] == "fresh" and np.allclose(again.score("u3", ["fresh"]), model.score("u3", ["fresh"]))


def test_evaluate_with_candidates(trained) -> None:
    model, _, _, _, _ = trained
    test = pd.DataFrame({"user": ["u3", "u25"], "item": ["i5", "i20"]})
    full = model.evaluate(test, k=5)
    only = model.evaluate(test, k=5, candidates=["i5", "i20", "i21"])
    assert full["queries"] == 2 and only["recall@5"] == 1.0


@pytest.mark.parametrize("scorer, loss, negatives", [("mlp", "softmax", "all"), ("linear", "bpr", 3),
                                                      ("dot", "softmax", 3)])
def test_scorers_and_losses_train(tmp_path: Path, scorer: str, loss: str, negatives) -> None:
    from ecomnlp.tasks.recommendation import RecoData, RecoNetwork, fit_recommendation

    paths = synthetic(tmp_path)
    data = RecoData(**{k: str(v) for k, v in paths.items()}, columns=COLUMNS, batch_size=64, valid_fraction=0.0)
    network = RecoNetwork(dim=8, scorer=scorer, loss=loss, negatives=negatives, cross_negatives=3, rerank=10,
                          hidden=[8])
    model, summary = fit_recommendation(data, {}, network=network, trainer=trainer(3), work_dir=tmp_path / "r", k=5)
    assert summary["metrics"]["test"]["queries"] == N_USERS and "valid" not in summary["metrics"]
    got = model.recommend("u1", k=4)
    assert len(got) == 4 and all(0 <= r["score"] <= 1 for r in got)
    assert model.card["probability"].startswith("softmax" if (scorer, loss) == ("dot", "softmax") else "sigmoid")


def test_item_cold_start_split(tmp_path: Path) -> None:
    from ecomnlp.tasks.recommendation import RecoData, load_reco_splits

    paths = synthetic(tmp_path)
    data = RecoData(**{k: str(v) for k, v in paths.items()}, columns=COLUMNS, cold_items=0.25, valid_fraction=0.1)
    splits = load_reco_splits(data)
    assert len(splits.cold) == 6
    assert not set(splits.frames["train"]["item"]) & splits.cold
    assert not set(splits.frames["valid"]["item"]) & splits.cold
    everything = pd.read_csv(paths["interactions"])
    assert int(everything["iid"].isin(splits.cold).sum()) == int(splits.frames["test"]["item"].isin(splits.cold).sum())


def test_cli_train_reco(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ecomnlp.cli import main

    with pytest.raises(SystemExit) as info:  # the MovieLens config parses with this command's parser
        main(["train-reco", "--config", str(ROOT / "configs" / "recommendation.yaml"), "--print_config"])
    assert info.value.code in (0, None)
    paths = synthetic(tmp_path)
    config = tmp_path / "reco.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(tmp_path / "task"), "data": {**{k: str(v) for k, v in paths.items()}, "columns": COLUMNS},
        "network": {"dim": 8, "loss": "bce", "negatives": 2},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "progress_bar": False}}))
    capsys.readouterr()
    main(["train-reco", "--config", str(config), "--network.history", "3"])
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{\n"):])
    assert summary["metrics"]["test"]["queries"] == N_USERS and (tmp_path / "task" / "card.json").exists()
    assert json.loads((tmp_path / "task" / "card.json").read_text())["model"]["history"] == 3
