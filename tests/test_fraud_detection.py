"""Fraud detection on tiny synthetic records whose answer is known (a fraud is a record with a large x0):
imbalance handling, the validation threshold, text-free and text-bearing records, NaN and unseen categories,
save -> load -> identical scores, explanations, ECOD against PyOD, and the CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import (FRAUD_FEATURES as FEATURES, FRAUD_TAIL as TAIL, NEGATIVE, POSITIVE, fit_tiny_fraud as fit,
                      fraud_records as records)

TEXT_FEATURES = {**FEATURES, "templates": {"note": "{note}"}}


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory):
    """A text-free supervised model, saved; building it must never construct an encoder."""
    import ecomnlp.predictor
    import ecomnlp.tasks.fraud_detection as fraud

    def no_encoder(*args, **kwargs):
        raise AssertionError("a text-free fraud task loaded a text encoder")

    tmp = tmp_path_factory.mktemp("fraud")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fraud, "Backbone", no_encoder)
        mp.setattr(ecomnlp.predictor, "Backbone", no_encoder)
        model, summary = fit(tmp, records(3000))
        model.save(tmp / "task")
        import ecomnlp

        loaded = ecomnlp.load(tmp / "task")
    return model, summary, loaded, tmp / "task"


# --- imbalance handling ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("pos_weight, gamma", [(1.0, 0.0), (3.0, 0.0), (1.0, 2.0), (3.0, 2.0)])
def test_imbalance_loss_weights_positives_and_focuses_on_hard_rows(pos_weight: float, gamma: float) -> None:
    from ecomnlp.detection import imbalance_loss

    logits, targets = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    p = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))
    p_true = [0.5, 1 - p[0], p[1]]  # probability given to each row's true class
    weights = [pos_weight, 1.0, pos_weight]
    terms = [w * (1 - q) ** gamma * -math.log(q) for w, q in zip(weights, p_true)]
    assert imbalance_loss(logits, targets, pos_weight, gamma).item() == pytest.approx(sum(terms) / sum(weights))


@pytest.mark.parametrize("option, expected", [("balanced", 4.0), ("sqrt", 2.0), (5.0, 5.0), (None, 1.0)])
def test_class_weight_options(option, expected: float) -> None:
    from ecomnlp.detection import resolve_pos_weight

    labels = np.array([1, 1] + [0] * 8 + [np.nan] * 3)  # unlabelled rows do not count
    assert resolve_pos_weight(option, labels) == expected


@pytest.fixture(scope="module")
def unweighted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Test metrics of plain binary cross-entropy, no class weights, same rows and budget."""
    from ecomnlp.tasks.fraud_detection import NetworkSettings

    _, summary = fit(tmp_path_factory.mktemp("plain"), records(3000),
                     network=NetworkSettings(hidden=[32, 16], pos_weight=None))
    return summary["metrics"]["test"]


@pytest.mark.parametrize("loss, pos_weight", [("bce", "balanced"), ("bce", "sqrt"), ("focal", None)])
def test_imbalance_handling_finds_the_rare_frauds(tmp_path: Path, unweighted: dict, loss: str, pos_weight) -> None:
    """1.5% frauds, decided by x0 alone: with class weights or focal loss the same small training budget ranks the
    held-out frauds far better than plain cross-entropy does."""
    from ecomnlp.tasks.fraud_detection import NetworkSettings

    model, summary = fit(tmp_path, records(3000), network=NetworkSettings(hidden=[32, 16], loss=loss,
                                                                          pos_weight=pos_weight))
    train = summary["splits"]["train"]
    assert 0.005 < train["frauds"] / train["rows"] < 0.03
    ratio = (train["rows"] - train["frauds"]) / train["frauds"]
    expected_weight = {"balanced": ratio, "sqrt": math.sqrt(ratio), None: 1.0}[pos_weight]
    assert model.card["model"]["pos_weight"] == pytest.approx(expected_weight)
    assert model.card["model"]["focal_gamma"] == (2.0 if loss == "focal" else 0.0)
    test = summary["metrics"]["test"]
    assert test["positives"] == unweighted["positives"] >= 5
    assert test["auroc"] >= 0.95 and test["auprc"] >= unweighted["auprc"] + 0.25


# --- the threshold --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [0.5, 0.8, 0.9])
def test_precision_threshold_meets_its_target_with_the_most_recall(target: float) -> None:
    from ecomnlp.detection import choose_threshold

    rng = np.random.default_rng(1)
    labels = (rng.random(2000) < 0.05).astype(float)
    scores = labels + rng.normal(scale=0.6, size=2000)
    chosen = choose_threshold(scores, "precision", target, labels)
    alerts = scores >= chosen["value"]
    assert chosen["met"] and labels[alerts].mean() >= target
    assert chosen["valid"]["precision"] == pytest.approx(labels[alerts].mean())
    better = [t for t in np.unique(scores) if labels[scores >= t].mean() >= target and t < chosen["value"]]
    assert not better  # no lower threshold (more frauds caught) also meets the target


def test_unreachable_precision_falls_back_to_the_most_precise_threshold() -> None:
    from ecomnlp.detection import choose_threshold

    scores, labels = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.0, 1.0, 0.0, 1.0])
    chosen = choose_threshold(scores, "precision", 0.9, labels)
    assert not chosen["met"] and chosen["value"] == 0.6 and chosen["valid"]["precision"] == 0.5


@pytest.mark.parametrize("rule, target, alerts", [("alerts_per_day", 10, 30), ("alert_rate", 0.1, 300)])
def test_alert_budget_threshold(rule: str, target: float, alerts: int) -> None:
    from ecomnlp.detection import choose_threshold

    scores = np.random.default_rng(2).normal(size=3000)
    times = np.linspace(0, 3 * 86400, 3000)  # three days
    chosen = choose_threshold(scores, rule, target, times=times)
    assert chosen["valid"]["alerts"] == alerts == int(np.sum(scores >= chosen["value"]))


def test_trained_threshold_meets_its_target_on_validation(supervised) -> None:
    model, summary, _, _ = supervised
    chosen = model.card["threshold"]
    assert chosen["rule"] == "precision" and chosen["met"] and chosen["valid"]["precision"] >= 0.9
    assert summary["metrics"]["valid"]["at_threshold"]["precision"] == pytest.approx(chosen["valid"]["precision"])
    assert model.card["calibration"]["method"] == "platt"


# --- records: text-free, text-bearing, NaN and unseen categories ----------------------------------------------

def test_text_free_task_has_no_encoder_files_and_reloads_identically(supervised) -> None:
    model, _, loaded, task = supervised
    assert sorted(p.name for p in task.iterdir()) == ["card.json", "features.json", "model.safetensors"]
    card = json.loads((task / "card.json").read_text())
    assert card["kind"] == "fraud" and "base_model" not in card and loaded.backbone is None
    frame = records(500, seed=7)
    assert np.array_equal(model.scores(frame), loaded.scores(frame))


def test_nan_missing_and_unseen_values_score(supervised) -> None:
    _, _, loaded, _ = supervised
    rows = [{"x0": 3.5, "x1": float("nan"), "amount": 20.0, "country": "FR"},
            {"x0": None, "x1": 0.1, "amount": float("nan"), "country": "ZZ"},  # unseen category
            {"x0": -1.0, "amount": 5.0},  # no x1, no country: missing
            {"x0": 0.2, "x1": 0.3, "amount": 1.0, "country": None}]
    out = loaded.score(rows, top_k=2)
    assert len(out) == 4 and all(0 <= r["score"] <= 1 and isinstance(r["alert"], bool) for r in out)
    assert out[0]["alert"] and not out[2]["alert"]
    assert all(len(r["explanation"]) <= 2 for r in out)
    frame_scores = loaded.scores(pd.DataFrame(rows))  # a DataFrame gives the same scores as dicts
    assert np.allclose(frame_scores, [r["score"] for r in out])


def test_explanation_names_the_field_that_decides(supervised) -> None:
    """A fraud is decided by x0: it is the top contributing field of every alert."""
    _, _, loaded, _ = supervised
    frame = records(2000, seed=3)
    alerts = [r for r in loaded.score(frame, top_k=3) if r["alert"]]
    assert alerts and all(r["explanation"][0]["field"] == "x0" for r in alerts)
    first = alerts[0]["explanation"][0]
    assert first["value"] > TAIL and first["contribution"] > 0


def test_text_bearing_task_trains_its_adapter_and_checks_its_base(tmp_path: Path, tiny_encoder: Path,
                                                                   other_tiny_encoder: Path) -> None:
    import ecomnlp
    from ecomnlp.artifact import ArtifactError
    from ecomnlp.data import DataError

    model, summary = fit(tmp_path, records(1500), TEXT_FEATURES, model=str(tiny_encoder), epochs=2)
    task = model.save(tmp_path / "task")
    assert {"adapter_config.json", "adapter_model.safetensors", "features.json", "model.safetensors"} <= {
        p.name for p in task.iterdir()}
    assert model.card["text_fields"] == ["note"] and model.card["base_model"]["path"] == str(tiny_encoder)
    loaded = ecomnlp.load(task)
    frame = records(200, seed=5)
    assert np.array_equal(model.scores(frame), loaded.scores(frame))
    out = loaded.score([{"x0": 0.1, "x1": 0.0, "amount": 3.0, "country": "US"}])  # no note: an empty text
    assert math.isfinite(out[0]["score"])
    extra = loaded.score([{"x0": 0.1, "x1": 0.0, "amount": 3.0, "country": "US", "order_id": 7, "label": 0}])
    assert extra == out  # keys the model does not read are ignored while its own are all there
    assert loaded.score({"x0": 0.1, "x1": 0.0, "amount": 3.0, "country": "US"}) == out  # one record, not in a list
    for typo, meant in (("X0", "x0"), ("notes", "note"), ("ammount", "amount")):
        record = {"x0": 0.1, "x1": 0.0, "amount": 3.0, "country": "US", "note": "ok"}
        record[typo] = record.pop(meant)
        with pytest.raises(DataError, match=f"record 1: field '{typo}' is not one the model reads, and '{meant}' is"):
            loaded.score([record])
    notes = [e for r in loaded.score(frame.head(50), top_k=10) for e in r["explanation"] if e["field"] == "note"]
    assert all(e["value"] in POSITIVE + NEGATIVE for e in notes)
    with pytest.raises(ArtifactError, match="base model"):
        ecomnlp.load(task, base=str(other_tiny_encoder))
    (task / "adapter_model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="adapter_model.safetensors"):
        ecomnlp.load(task)


def test_unsupervised_text_bearing_autoencoder(tmp_path: Path, tiny_encoder: Path) -> None:
    import ecomnlp

    model, summary = fit(tmp_path, records(1500), TEXT_FEATURES, mode="unsupervised", detector="autoencoder",
                         model=str(tiny_encoder), epochs=2)
    assert model.card["training"]["labels_used"] is False and model.card["score"] == "anomaly score"
    loaded = ecomnlp.load(model.save(tmp_path / "task"))
    frame = records(200, seed=6)
    assert np.array_equal(model.scores(frame), loaded.scores(frame))


# --- detectors: save -> load -> identical scores ---------------------------------------------------------------

@pytest.mark.parametrize("mode, detector, threshold, epochs", [
    ("unsupervised", "autoencoder", ("alerts_per_day", 20.0), 3),
    ("unsupervised", "deep_svdd", ("alert_rate", 0.02), 8),  # Deep SVDD needs its autoencoder pretrained longer
    ("unsupervised", "ecod", ("alert_rate", 0.02), 0),
    ("semi_supervised", "autoencoder", ("precision", 0.5), 3),
    ("semi_supervised", "ecod", ("precision", 0.5), 0),
])
def test_detectors_save_load_identical(tmp_path: Path, mode: str, detector: str, threshold: tuple,
                                       epochs: int) -> None:
    import ecomnlp
    from ecomnlp.tasks.fraud_detection import NetworkSettings, ThresholdSettings

    frame = records(2000)
    if mode == "semi_supervised":  # most labels missing
        frame["label"] = frame["label"].astype(object)
        frame.loc[frame.index % 3 != 0, "label"] = None
    model, summary = fit(tmp_path, frame, mode=mode, detector=detector, threshold=ThresholdSettings(*threshold),
                         network=NetworkSettings(hidden=[16], bottleneck=4, mask=0.3), epochs=epochs or 1)
    loaded = ecomnlp.load(model.save(tmp_path / "task"))
    other = records(300, seed=9)
    assert np.array_equal(model.scores(other), loaded.scores(other))
    assert loaded.threshold == model.threshold and loaded.card["detector"] == detector
    assert summary["metrics"]["test"]["auroc"] > 0.8  # x0's tail is rare, so it is anomalous too
    calibrated = model.card["calibration"]["method"] == "platt"
    assert calibrated == (mode == "semi_supervised")  # validation labels turn the anomaly score into a probability


def test_unsupervised_mode_reads_no_labels(tmp_path: Path) -> None:
    """Shuffling the labels changes nothing in an unsupervised model, only the metrics."""
    frame = records(1500)
    scrambled = frame.assign(label=np.random.default_rng(0).permutation(frame["label"].to_numpy()))
    scores = []
    for i, f in enumerate((frame, scrambled)):
        (tmp_path / str(i)).mkdir()
        model, _ = fit(tmp_path / str(i), f, mode="unsupervised", detector="autoencoder", epochs=2)
        scores.append(model.scores(records(200, seed=4)))
    assert np.array_equal(*scores)


def test_ecod_scores_a_record_as_pyod_does_for_a_batch_of_one() -> None:
    from pyod.models.ecod import ECOD

    from ecomnlp.detectors import Ecod

    rng = np.random.default_rng(0)
    train = np.c_[rng.normal(size=400), rng.exponential(size=400), -rng.exponential(size=400)]
    ours = Ecod(400, 3).fit(torch.from_numpy(train))
    reference = ECOD().fit(train)
    rows = np.r_[train[:3], [[4.0, 0.01, -6.0], [0.0, 9.0, 0.0]]]
    ours_scores = ours.score({"numeric": torch.from_numpy(rows).float(), "categorical": None, "text": None})
    for row, score in zip(rows, ours_scores.tolist()):
        assert score == pytest.approx(reference.decision_function(row[None])[0], rel=1e-4)


# --- files and the command line ---------------------------------------------------------------------------------

def test_incomplete_fraud_directory_is_refused(supervised, tmp_path: Path) -> None:
    import shutil

    from ecomnlp.artifact import ArtifactError, read_card

    task = shutil.copytree(supervised[3], tmp_path / "task")
    (task / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="model.safetensors is missing"):
        read_card(task)


def test_cli_train_fraud(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    import ecomnlp
    from ecomnlp.cli import main

    root = Path(__file__).resolve().parents[1]
    with pytest.raises(SystemExit) as info:  # the benchmark config parses with this command's parser
        main(["train-fraud", "--config", str(root / "configs" / "fraud_detection.yaml"), "--print_config"])
    assert info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["split"] == "temporal" and len(printed["features"]["numeric"]) == 30
    assert printed["features"]["numeric"]["Time"] == {"period": 86400} and printed["network"]["members"] == 5

    data = tmp_path / "records.csv"
    records(1500).to_csv(data, index=False)
    config = tmp_path / "fraud.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(tmp_path / "task"), "data": {"train": str(data), "time": "minute", "split": "temporal",
                                                 "test_fraction": 0.2, "batch_size": 128},
        "features": FEATURES, "network": {"hidden": [16]},
        "trainer": {"max_epochs": 2, "lr": 1e-2, "progress_bar": False, "accelerator": "cpu", "devices": 1}}))
    main(["train-fraud", "--config", str(config), "--threshold.rule", "alerts_per_day", "--threshold.target", "50"])
    out = capsys.readouterr().out
    summary = json.loads(out[out.index('{\n  "out"'):])
    assert summary["out"] == str(tmp_path / "task") and summary["threshold"]["rule"] == "alerts_per_day"
    model = ecomnlp.load(tmp_path / "task")
    assert model.card["threshold"] == summary["threshold"] and model.card["mode"] == "supervised"


# --- seed ensembles and periodic features -----------------------------------------------------------------------

def test_seed_ensemble_averages_independent_members_and_reloads_identically(tmp_path: Path) -> None:
    import ecomnlp
    from ecomnlp.tabular import Ensemble, score_inputs
    from ecomnlp.tasks.fraud_detection import NetworkSettings

    model, summary = fit(tmp_path, records(3000), network=NetworkSettings(hidden=[32, 16], members=3), epochs=4)
    assert isinstance(model.scorer, Ensemble) and model.card["model"]["members"] == 3
    assert len(summary["epochs"]) == 3 and (tmp_path / "run.member2.train").is_dir()
    inputs = model.inputs(records(300, seed=8))[0]
    members = np.stack([score_inputs(m, inputs) for m in model.scorer.members])
    assert not np.allclose(members[0], members[1]) and not np.allclose(members[1], members[2])
    mean = (1 / (1 + np.exp(-members))).mean(0)
    np.testing.assert_allclose(score_inputs(model.scorer, inputs), np.log(mean / (1 - mean)), rtol=1e-4, atol=1e-4)
    assert summary["metrics"]["test"]["auroc"] > 0.95
    loaded = ecomnlp.load(model.save(tmp_path / "task"))
    assert isinstance(loaded.scorer, Ensemble) and len(loaded.scorer.members) == 3
    frame = records(300, seed=9)
    assert np.array_equal(model.scores(frame), loaded.scores(frame))


@pytest.mark.parametrize("mode, detector, features, members", [
    ("supervised", "classifier", FEATURES, 0),
    ("unsupervised", "autoencoder", FEATURES, 2),
    ("supervised", "classifier", TEXT_FEATURES, 2),  # members would share the one text adapter
])
def test_seed_ensemble_is_refused_where_it_cannot_work(tmp_path: Path, mode: str, detector: str, features: dict,
                                                       members: int) -> None:
    from ecomnlp.tasks.fraud_detection import NetworkSettings

    with pytest.raises(ValueError, match="network.members"):
        fit(tmp_path, records(200), features, mode=mode, detector=detector, network=NetworkSettings(members=members))


def test_periodic_field_is_one_explained_field() -> None:
    """A periodic column's sin and cos (and its missing indicator) are occluded together, as one field."""
    from ecomnlp.features import FeaturePipeline
    from ecomnlp.tabular import field_groups

    spec = {"numeric": {"minute": {"period": 1440}, "x0": {}, "x1": {}}, "categorical": {"country": {}}}
    frame = records(500).assign(minute=lambda f: f["minute"].where(f.index % 50 > 0))
    pipeline = FeaturePipeline(spec).fit(frame)
    assert pipeline.numeric_names == ["minute_sin", "minute_cos", "minute_missing", "x0", "x1", "x1_missing"]
    groups = {g.name: (g.numeric, g.categorical) for g in field_groups(pipeline)}
    assert groups == {"minute": ((0, 1, 2), ()), "x0": ((3,), ()), "x1": ((4, 5), ()), "country": ((), (0,))}


# --- gradient-boosted trees as an ensemble member ------------------------------------------------------------------

@pytest.mark.parametrize("options", [
    {"max_iter": 20, "early_stopping": False},
    {"learning_rate": 0.05, "max_iter": 30, "max_leaf_nodes": 7, "class_weight": "balanced", "early_stopping": False},
])
def test_boosted_trees_score_as_sklearn_and_reload_identically(options: dict) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    from ecomnlp.tabular import BoostedTrees

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 4)).astype(np.float32)
    x[::7, 2] = np.nan  # missing values follow each split's learned direction
    y = ((x[:, 0] + np.nan_to_num(x[:, 2], nan=2.0) ** 2 + rng.normal(size=2000) * 0.3) > 2).astype(np.float32)
    trees = BoostedTrees(options)
    trees.fit(torch.from_numpy(x), torch.from_numpy(np.where(np.arange(2000) % 11, y, np.nan)), seed=0)
    known = np.arange(2000) % 11 > 0
    expected = HistGradientBoostingClassifier(random_state=0, **options).fit(x[known], y[known].astype(int))
    scores = trees.score({"numeric": torch.from_numpy(x)}, chunk=300).numpy()
    np.testing.assert_allclose(scores, expected.decision_function(x), rtol=1e-5, atol=1e-5)
    loaded = BoostedTrees()
    loaded.load_state_dict(trees.state_dict())
    assert np.array_equal(loaded.score({"numeric": torch.from_numpy(x)}).numpy(), scores)


def test_trees_member_blends_with_its_weight_and_reloads_identically(tmp_path: Path) -> None:
    import ecomnlp
    from ecomnlp.tabular import BoostedTrees, Ensemble, score_inputs
    from ecomnlp.tasks.fraud_detection import NetworkSettings

    network = NetworkSettings(hidden=[32, 16], members=2, trees=0.4,
                              trees_options={"max_iter": 20, "early_stopping": False})
    model, summary = fit(tmp_path, records(3000), network=network, epochs=3)
    assert isinstance(model.scorer, Ensemble) and isinstance(model.scorer.members[2], BoostedTrees)
    assert len(summary["epochs"]) == 2 and summary["metrics"]["test"]["auroc"] > 0.95
    inputs = model.inputs(records(300, seed=8))[0]
    p = 1 / (1 + np.exp(-np.stack([score_inputs(m, inputs) for m in model.scorer.members])))
    blend = 0.3 * p[0] + 0.3 * p[1] + 0.4 * p[2]
    np.testing.assert_allclose(score_inputs(model.scorer, inputs), np.log(blend / (1 - blend)), rtol=1e-4, atol=1e-4)
    loaded = ecomnlp.load(model.save(tmp_path / "task"))
    frame = records(300, seed=9)
    assert np.array_equal(model.scores(frame), loaded.scores(frame))
    assert loaded.score(frame.iloc[:5])[0]["explanation"] == model.score(frame.iloc[:5])[0]["explanation"]


@pytest.mark.parametrize("mode, detector, features, trees", [
    ("supervised", "classifier", FEATURES, 1.0),
    ("unsupervised", "autoencoder", FEATURES, 0.4),
    ("supervised", "classifier", TEXT_FEATURES, 0.4),
])
def test_trees_member_is_refused_where_it_cannot_work(tmp_path: Path, mode: str, detector: str, features: dict,
                                                      trees: float) -> None:
    from ecomnlp.tasks.fraud_detection import NetworkSettings

    with pytest.raises(ValueError, match="network.trees"):
        fit(tmp_path, records(200), features, mode=mode, detector=detector, network=NetworkSettings(trees=trees))


@pytest.mark.parametrize("times", [[5, None, 1, 3, 2, 4, 0, 6, 7, 8],
                                   ["2024-01-05", None, "2024-01-01", "2024-01-03", "2024-01-02", "2024-01-04",
                                    "2023-12-31", "2024-01-06", "2024-01-07", "2024-01-08"]])
def test_temporal_split_holds_out_the_latest_and_refuses_rows_without_a_time(times: list) -> None:
    from ecomnlp.data import DataError
    from ecomnlp.tabular import split_frame

    frame = pd.DataFrame({"t": times, "x": range(10)})
    with pytest.raises(DataError, match=r"row 2, column 't': no time, .* \(1 such row\(s\)\)"):
        split_frame(frame, 0.2, "temporal", 0, "t")
    frame.loc[1, "t"] = times[0]
    kept, held = split_frame(frame, 0.2, "temporal", 0, "t")
    assert held["x"].tolist() == [8, 9] and len(kept) == 8


def test_a_bad_value_in_the_test_rows_stops_before_training(tmp_path: Path) -> None:
    from ecomnlp.data import DataError

    frame = records(3000)
    frame["x1"] = frame["x1"].astype(object)
    frame.loc[2990, "x1"] = "oops"  # among the latest 20% by time: a test row
    with pytest.raises(DataError, match=r"latest 20% of .*records.csv, test rows \(counted within them\): row 591, "
                                        r"column 'x1': 'oops' is not a finite number"):
        fit(tmp_path, frame)
    assert not (tmp_path / "run").exists()  # nothing trained
