"""Cross-validation and hyper-parameter search: folds, what is read, best.yaml, seeding, space errors."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import sentiment_rows, write_csv

SPACE = {"lr": [1e-3, 1e-1], "r": [2, 4], "dropout": [0.0, 0.3]}


def _config(folder: Path, tiny_encoder: Path, **data: str) -> Path:
    """A tiny review-sentiment train config (48 training rows, one short epoch per training)."""
    train = write_csv(folder / "reviews.csv", ["review", "label"], [r[:2] for r in sentiment_rows()])
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "task": "review_sentiment",
        "model": str(tiny_encoder),
        "out": str(folder / "runs" / "sentiment"),
        "data": {"train": str(train), "columns": {"text": "review"}, "batch_size": 8, "eval_batch_size": 16, **data},
        "lora": {"r": 4, "alpha": 8},
        "trainer": {"max_epochs": 1, "lr": 1e-2, "progress_bar": False, "accelerator": "cpu", "devices": 1,
                    "log_every_n_steps": 1, "seed": 3},
    }))
    return config


@pytest.fixture
def config(tmp_path: Path, tiny_encoder: Path) -> Path:
    """Its test file does not exist: reading it would fail."""
    valid = write_csv(tmp_path / "valid.csv", ["review", "label"], [r[:2] for r in sentiment_rows(1)])
    return _config(tmp_path, tiny_encoder, valid=str(valid), test=str(tmp_path / "absent-test.csv"))


@pytest.mark.parametrize("stratified", [True, False])
def test_folds_partition_the_rows_and_keep_label_proportions(stratified: bool) -> None:
    from ecomnlp.tuning import fold_indices

    labels = ["a"] * 30 + ["b"] * 12 + ["c"] * 7
    parts = fold_indices(len(labels), 5, seed=0, labels=labels if stratified else None)
    assert sorted(i for part in parts for i in part) == list(range(len(labels)))  # every row held out once
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == fold_indices(len(labels), 5, seed=0, labels=labels if stratified else None)
    if stratified:
        for label, total in Counter(labels).items():
            counts = [sum(labels[i] == label for i in part) for part in parts]
            assert max(counts) - min(counts) <= 1 and sum(counts) == total


def test_fold_count_is_checked() -> None:
    from ecomnlp.tuning import fold_indices

    for folds in (1, 7):
        with pytest.raises(ValueError, match=r"folds must be between 2 and the number of training rows \(6\)"):
            fold_indices(6, folds, seed=0)


def test_cv_trains_on_training_rows_only(tmp_path: Path, tiny_encoder: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import ecomnlp.data
    from ecomnlp.cli import main

    config = _config(tmp_path, tiny_encoder, valid=str(tmp_path / "absent-valid.csv"),
                     test=str(tmp_path / "absent-test.csv"))
    read = []
    real_read_table = ecomnlp.data.read_table
    monkeypatch.setattr(ecomnlp.data, "read_table", lambda path: read.append(str(path)) or real_read_table(path))
    main(["cv", "--config", str(config), "--folds", "3", "--seed", "1"])
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert read == [str(tmp_path / "reviews.csv")]  # the training file, once; folds are passed as rows
    assert result["metric"] == "accuracy"
    assert [fold["examples"] for fold in result["folds"]] == [16, 16, 16]
    scores = [fold["accuracy"] for fold in result["folds"]]
    assert result["mean"] == pytest.approx(statistics.fmean(scores))
    assert result["std"] == pytest.approx(statistics.pstdev(scores))


def test_cv_refuses_a_label_with_a_single_row(tmp_path: Path, tiny_encoder: Path) -> None:
    from ecomnlp.cli import train_arguments
    from ecomnlp.tuning import cross_validate

    args = train_arguments(str(_config(tmp_path, tiny_encoder)), ["--task_options", "{mode: stars}"])
    write_csv(tmp_path / "reviews.csv", ["review", "label"], [r[:2] for r in sentiment_rows()] + [("great tea", "5")])
    with pytest.raises(ValueError, match=r"reviews.csv: label\(s\) \['5'\] have a single row"):
        cross_validate(args, folds=3)


@pytest.fixture
def tuned(config: Path, tmp_path: Path) -> Path:
    from ecomnlp.cli import main

    out = tmp_path / "tune"
    main(["tune", "--config", str(config), "--out", str(out), "--trials", "3", "--seed", "5",
          "--space", json.dumps(SPACE)])
    return out


def test_tune_writes_the_best_trial_as_a_train_config(tuned: Path, config: Path) -> None:
    from ecomnlp.cli import train_arguments

    record = json.loads((tuned / "trials.json").read_text(encoding="utf-8"))
    assert sorted(p.name for p in tuned.iterdir()) == ["best.yaml", "trials.json"]  # no temporary files left
    assert [t["number"] for t in record["trials"]] == [0, 1, 2]
    assert record["metric"] == "accuracy"
    for t in record["trials"]:
        assert set(t["params"]) == set(SPACE) and t["score"] == t["validation"]["accuracy"]
        assert t["validation"]["examples"] == 12  # the valid file, not a share of train
    best = max(record["trials"], key=lambda t: t["score"])
    assert record["best"]["score"] == best["score"]

    args = train_arguments(str(tuned / "best.yaml"))
    assert args["trainer"].lr == record["best"]["params"]["lr"]
    assert args["lora"].r == record["best"]["params"]["r"]
    assert args["lora"].dropout == record["best"]["params"]["dropout"]
    original = train_arguments(str(config))
    assert args["lora"].alpha == original["lora"].alpha and args["data"] == original["data"]  # the rest unchanged


def test_seeded_search_is_reproducible(tuned: Path, config: Path, tmp_path: Path) -> None:
    from ecomnlp.tuning import search

    first = json.loads((tuned / "trials.json").read_text(encoding="utf-8"))
    again = search(str(config), str(tmp_path / "again"), trials=3, space=SPACE, seed=5)
    assert [t["params"] for t in again["trials"]] == [t["params"] for t in first["trials"]]
    assert len({t["params"]["lr"] for t in first["trials"]}) == 3  # the sampler does move


def test_search_by_cross_validation_mean(config: Path, tmp_path: Path) -> None:
    from ecomnlp.tuning import search

    record = search(str(config), str(tmp_path / "cv"), trials=1, space={"lr": [1e-3, 1e-1]}, folds=2)
    trial = record["trials"][0]
    assert set(trial["params"]) == {"lr"} and trial["score"] == trial["validation"]["mean"]
    assert [fold["examples"] for fold in trial["validation"]["folds"]] == [24, 24]  # folds of the 48 training rows
    best = yaml.safe_load((tmp_path / "cv" / "best.yaml").read_text(encoding="utf-8"))
    assert best["trainer"]["lr"] == trial["params"]["lr"] and best["lora"] == {"r": 4, "alpha": 8}


def test_multi_label_folds_are_not_stratified(tmp_path: Path, tiny_encoder: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import ecomnlp.tuning
    from ecomnlp.cli import train_arguments

    config = _config(tmp_path, tiny_encoder)
    write_csv(tmp_path / "reviews.csv", ["review", "label"], [(t, f"{cat}|{y}") for t, y, cat in sentiment_rows()])
    args = train_arguments(str(config), ["--task", "product_classification", "--task_options", "{multi_label: true}"])
    given = []
    real_fold_indices = ecomnlp.tuning.fold_indices
    monkeypatch.setattr(ecomnlp.tuning, "fold_indices", lambda *a: given.append(a[3]) or real_fold_indices(*a))
    result = ecomnlp.tuning.cross_validate(args, folds=2)
    assert given == [None]
    assert result["metric"] == "f1_macro" and [fold["examples"] for fold in result["folds"]] == [24, 24]


@pytest.mark.parametrize("space, message", [
    ({"lr": [1e-2, 1e-3]}, r"'lr' must be \[low, high\] with 0 < low < high"),
    ({"lr": [0.0, 1e-3]}, r"'lr' must be \[low, high\] with 0 < low < high"),
    ({"dropout": [0.1, 1.5]}, r"'dropout' must be \[low, high\] with 0 <= low < high < 1"),
    ({"r": []}, r"'r' must be a list of LoRA ranks"),
    ({"r": [4, 2.5]}, r"'r' must be a list of LoRA ranks"),
    ({"r": "8"}, r"'r' must be a list of LoRA ranks"),
    ({"momentum": [0.8, 0.99]}, r"keys must be some of \['dropout', 'lr', 'r'\], got \['momentum'\]"),
    ({}, r"keys must be some of"),
])
def test_bad_space_is_a_clear_error(space: dict, message: str, tmp_path: Path) -> None:
    from ecomnlp.tuning import search

    with pytest.raises(ValueError, match=message):
        search(str(tmp_path / "never-read.yaml"), str(tmp_path / "out"), trials=1, space=space)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="trials must be at least 1, not 0"):
        search(str(tmp_path / "never-read.yaml"), str(tmp_path / "out"), trials=0)


def test_tune_and_cv_help_import_no_torch() -> None:
    code = (
        "import sys\nfrom ecomnlp.cli import main\n"
        "for command in ('tune', 'cv'):\n"
        "    try:\n        main([command, '--help'])\n    except SystemExit as e:\n        assert e.code in (0, None)\n"
        "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'optuna') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in result.stdout, result.stdout[-500:] + result.stderr[-2000:]
    for option in ("--trials", "--folds", "--space", "--seed"):
        assert option in result.stdout
