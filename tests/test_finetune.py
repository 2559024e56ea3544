"""Per-domain fine-tuning: a trained task continues on new rows and is saved as a new directory."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import NEGATIVE, POSITIVE, quick_train, sentiment_rows, write_csv


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path, sentiment_csv: Path) -> Path:
    out = tmp_path_factory.mktemp("finetune") / "sentiment"
    quick_train("review_sentiment", sentiment_csv, out, tiny_encoder, columns={"text": "review"}, base_dropout=0.0)
    return out


def _new_domain(folder: Path, rows: int = 40) -> Path:
    """The 'new shop': same label space, flipped wording mix (mostly Chinese, reversed order)."""
    data = [(t, "1") for t in reversed(POSITIVE)] + [(t, "0") for t in reversed(NEGATIVE)]
    return write_csv(folder / "new_domain.csv", ["review", "label"], (data * 10)[:rows])


def test_finetune_writes_a_new_adapter_and_leaves_the_source_untouched(source: Path, tmp_path: Path,
                                                                      sentiment_csv: Path) -> None:
    from ecomnlp.cli import main

    before = _digest(source)
    out = tmp_path / "sentiment-new"
    main(["finetune", "--from", str(source), "--data", str(_new_domain(tmp_path)), "--examples", "24",
          "--old_test", str(sentiment_csv), "--out", str(out), "--trainer.max_epochs", "2",
          "--trainer.lr", "0.01", "--trainer.progress_bar", "false", "--trainer.accelerator", "cpu"])
    assert _digest(source) == before
    old = load_file(str(source / "adapter_model.safetensors"))
    new = load_file(str(out / "adapter_model.safetensors"))
    assert old.keys() == new.keys()
    assert any(not torch.equal(old[k], new[k]) for k in old)
    card = json.loads((out / "card.json").read_text())
    source_card = json.loads((source / "card.json").read_text())
    assert card["finetuned_from"]["path"] == str(source)
    assert card["task_state"]["labels"] == source_card["task_state"]["labels"]
    assert card["base_model"]["checksum"] == source_card["base_model"]["checksum"]
    assert card["training"]["base_dropout"] == source_card["training"]["base_dropout"] == 0.0  # kept from the source
    assert card["training"]["train_examples"] + card["training"]["valid_examples"] == 24
    for when in ("before", "after"):
        assert card["metrics"][when]["new_domain"]["examples"] == 16  # the 40 - 24 rows not trained on
        assert card["metrics"][when]["old_domain"]["examples"] == len(sentiment_rows())


def test_finetune_reports_the_source_model_as_before(source: Path, tmp_path: Path) -> None:
    """'before' is the untouched source scored on the held-out rows, not a model mid-training."""
    import ecomnlp
    from ecomnlp.config import DataConfig, TrainerSettings
    from ecomnlp.training import finetune

    held_out = write_csv(tmp_path / "held_out.csv", ["review", "label"], [(t, "1") for t in POSITIVE])
    summary = finetune(str(source), DataConfig(train=str(_new_domain(tmp_path)), test=str(held_out)),
                       str(tmp_path / "ft"), trainer=TrainerSettings(max_steps=1, progress_bar=False, accelerator="cpu"))
    expected = [p["label"] == "1" for p in ecomnlp.load(source).predict(POSITIVE)]
    assert summary["metrics"]["before"]["new_domain"]["accuracy"] == pytest.approx(sum(expected) / len(expected))


def test_finetune_refuses_labels_the_source_never_saw(source: Path, tmp_path: Path) -> None:
    from ecomnlp.config import DataConfig
    from ecomnlp.data import DataError
    from ecomnlp.training import finetune

    bad = write_csv(tmp_path / "stars.csv", ["review", "label"], [("great coffee", "1"), ("stale tea", "5")] * 5)
    with pytest.raises(DataError, match=r"stars.csv: row (\d+), column 'label': label '5' was not seen") as err:
        finetune(str(source), DataConfig(train=str(bad)), str(tmp_path / "never"), examples=6)
    row = int(err.value.args[0].split(": row ")[1].split(",")[0])
    assert row % 2 == 0  # the named row really holds the label '5'
    assert not (tmp_path / "never").exists()
