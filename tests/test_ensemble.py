"""Prediction ensembles: one task's adapters averaged on one base, saved as one directory, reloaded to the
same outputs; what cannot be an ensemble member, or be done to an ensemble, is refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ecomnlp
from conftest import quick_train

TEXTS = ["great coffee, fast shipping", "酒店早餐很难吃", "refund took too long"]


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path, sentiment_csv: Path) -> list[Path]:
    """Two sentiment adapters from the same config with different seeds."""
    root = tmp_path_factory.mktemp("ensemble")
    paths = [root / "seed1", root / "seed7"]
    for path, seed in zip(paths, (1, 7)):
        quick_train("review_sentiment", sentiment_csv, path, tiny_encoder, columns={"text": "review"},
                    trainer={"seed": seed})
    return paths


@pytest.fixture(scope="module")
def ensemble(members: list[Path], sentiment_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ecomnlp.cli import main

    out = tmp_path_factory.mktemp("built") / "ensemble"
    main(["ensemble", "--models", json.dumps([str(m) for m in members]), "--data.train", str(sentiment_csv),
          "--data.valid", str(sentiment_csv), "--data.test", str(sentiment_csv), "--lexical", "true", "--out", str(out)])
    return out


def test_ensemble_averages_its_members_logits_and_blends_its_lexical_part(members: list[Path], ensemble: Path) -> None:
    loaded = ecomnlp.load(ensemble)
    assert len(loaded.members) == 1 and (ensemble / "members" / "1" / "adapter_model.safetensors").exists()
    alone = [ecomnlp.load(m).logits(TEXTS) for m in members]
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # the seeds made different adapters
    ids = [loaded.backbone.tokenizer(t, truncation=True, max_length=loaded.max_length)["input_ids"] for t in TEXTS]
    assert torch.allclose(loaded.id_logits(ids), (alone[0] + alone[1]) / 2, atol=1e-5)
    expected = loaded.lexical.blend((alone[0] + alone[1]) / 2, TEXTS)
    assert torch.allclose(loaded.logits(TEXTS), expected, atol=1e-5)
    assert [r["label"] for r in loaded.predict(TEXTS)] == [str(i) for i in expected.argmax(-1).tolist()]


def test_recorded_metrics_are_those_of_the_reloaded_ensemble(members: list[Path], ensemble: Path,
                                                             sentiment_csv: Path) -> None:
    import pandas as pd

    card = json.loads((ensemble / "card.json").read_text())
    assert [m["path"] for m in card["ensemble"]["members"]] == [str(m) for m in members]
    assert [m["training"]["seed"] for m in card["ensemble"]["members"]] == [1, 7]
    test = card["metrics"]["test"]
    assert len(test["members"]) == 2 and {"encoder", "lexical", "accuracy"} <= set(test)
    rows = pd.read_csv(sentiment_csv)
    predicted = [r["label"] for r in ecomnlp.load(ensemble).predict(rows["review"].tolist())]
    assert (rows["label"].astype(str) == predicted).mean() == pytest.approx(test["accuracy"])


def test_a_missing_member_file_is_named(ensemble: Path, tmp_path: Path) -> None:
    import shutil

    from ecomnlp.artifact import ArtifactError

    broken = tmp_path / "broken"
    shutil.copytree(ensemble, broken)
    (broken / "members" / "1" / "head.safetensors").unlink()
    with pytest.raises(ArtifactError, match="members/1/head.safetensors is missing"):
        ecomnlp.load(broken)


def _category(tmp_path: Path, encoder: Path, csv: Path) -> Path:
    quick_train("product_classification", csv, tmp_path / "category", encoder,
                columns={"text": "review", "label": "cat"}, epochs=1)
    return tmp_path / "category"


@pytest.mark.parametrize("case, message", [
    ("one member", "at least two"),
    ("another task", "task 'product_classification' differs"),
    ("an ensemble as member", "not a single trained text task"),
    ("seeds 1 and 7, no validation file", r"trained with seeds \[1, 7\]: each held out other rows"),
    ("fine-tune the ensemble", "is an ensemble of 2 adapters"),
    ("merge the ensemble", "is an ensemble: merge its members"),
    ("add a lexical part", "is an ensemble: build it again"),
])
def test_refusals(case: str, message: str, members: list[Path], ensemble: Path, tmp_path: Path,
                  tiny_encoder: Path, sentiment_csv: Path) -> None:
    from ecomnlp.compose import merge
    from ecomnlp.config import DataConfig, TrainerSettings
    from ecomnlp.ensemble import build_ensemble
    from ecomnlp.training import add_lexical, finetune

    data, out = DataConfig(train=str(sentiment_csv)), str(tmp_path / "never")
    actions = {
        "one member": lambda: build_ensemble([str(members[0])], data, out),
        "another task": lambda: build_ensemble([str(members[0]), str(_category(tmp_path, tiny_encoder, sentiment_csv))],
                                               data, out),
        "an ensemble as member": lambda: build_ensemble([str(members[0]), str(ensemble)], data, out),
        "seeds 1 and 7, no validation file": lambda: build_ensemble([str(m) for m in members], data, out),
        "fine-tune the ensemble": lambda: finetune(str(ensemble), data, out, trainer=TrainerSettings(max_epochs=1)),
        "merge the ensemble": lambda: merge([str(ensemble), str(members[0])], [0.5, 0.5], out),
        "add a lexical part": lambda: add_lexical(str(ensemble), data, out),
    }
    with pytest.raises(ValueError, match=message):
        actions[case]()
    assert not Path(out).exists()


def test_members_of_different_max_length_are_refused(members: list[Path], tmp_path: Path, tiny_encoder: Path,
                                                     sentiment_csv: Path) -> None:
    from ecomnlp.config import DataConfig
    from ecomnlp.ensemble import build_ensemble

    quick_train("review_sentiment", sentiment_csv, tmp_path / "short", tiny_encoder, columns={"text": "review"},
                epochs=1, data={"max_length": 8})
    with pytest.raises(ValueError, match="max_length 8 differs"):
        build_ensemble([str(members[0]), str(tmp_path / "short")], DataConfig(train=str(sentiment_csv)),
                       str(tmp_path / "never"))


def test_bench_quality_trains_the_missing_seed_once_and_tabulates_the_ensemble(
        tmp_path: Path, tiny_encoder: Path, sentiment_csv: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml

    import ecomnlp
    from conftest import import_script
    from ecomnlp.cli import train_arguments

    bench = import_script("bench_quality")
    config = tmp_path / "sentiment.yaml"
    config.write_text(yaml.safe_dump({
        "task": "review_sentiment", "model": str(tiny_encoder), "out": str(tmp_path / "unused"), "lexical": True,
        "data": {"train": str(sentiment_csv), "valid": str(sentiment_csv), "test": str(sentiment_csv),
                 "columns": {"text": "review"}, "batch_size": 8},
        "trainer": {"max_epochs": 2, "lr": 1e-2, "accelerator": "cpu", "devices": 1}}))
    case = bench.Case("tiny", str(config), 0.5, False)
    ecomnlp.train(**train_arguments(str(config), ["--out", str(tmp_path / "tiny"), "--trainer.progress_bar", "false"]))
    first = bench.ensemble_case(case, [7], None, tmp_path)
    again = bench.ensemble_case(case, [7], None, tmp_path)
    log = capsys.readouterr().out
    assert "training" in log and "reusing" in log and log.count("training ") == 1
    assert first["seeds"] == again["seeds"] == [42, 7] and first["metrics"] == again["metrics"]
    assert ecomnlp.load(tmp_path / "tiny.ensemble").members
    row = bench.ensemble_table([{"case": "tiny", "goal": 0.5, "ensemble": first}]).splitlines()[2]
    test, valid = first["metrics"]["test"], first["metrics"]["valid"]
    assert f"**{test['encoder']['accuracy']:.2%}**" in row and f"(w={first['lexical_weight']:.2f})" in row
    assert f"→ {valid['encoder']['accuracy']:.2%} (" in row and "| 2 (42, 7) |" in row


def test_rows_come_from_the_training_seed_and_the_cap_is_exact(sentiment_csv: Path) -> None:
    """add-lexical and ensemble hold out the validation rows training held out (its seed), and a cap keeps exactly
    ``max_train_examples`` rows."""
    from ecomnlp.config import DataConfig
    from ecomnlp.task import build_task
    from ecomnlp.training import split_seed, training_rows

    cards = [{"training": {"seed": 5}}, {"training": {"seed": 5}}]
    assert split_seed(cards, DataConfig(train="t.csv"), ["a", "b"]) == 5
    assert split_seed([{"training": {"seed": 1}}, {"training": {"seed": 7}}], DataConfig(train="t", valid="v"),
                      ["a", "b"]) == 1  # a validation file: the seed only picks capped rows, the first member's
    task = build_task("review_sentiment", {})
    for keep in range(1, 48):
        kept, rest = training_rows(task, DataConfig(train=str(sentiment_csv), columns={"text": "review"},
                                                    max_train_examples=keep), seed=0)
        assert (len(kept), len(rest)) == (keep, 48 - keep)
