"""The user workflow: train -> save -> load -> predict / evaluate, and what lands on disk."""
from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import ecomnlp
import ecomnlp.predictor
import ecomnlp.training
from conftest import NEGATIVE, POSITIVE, quick_train, write_csv
from ecomnlp.artifact import ArtifactError, base_checksum, save_artifact
from ecomnlp.backbone import Backbone
from ecomnlp.data import DataError, tokenize

ARTIFACT_FILES = ["adapter_config.json", "adapter_model.safetensors", "card.json", "head.safetensors"]
# Seen and unseen texts, short and long (truncated at the card's max_length), Chinese and English.
TEXTS = POSITIVE + NEGATIVE + ["", "completely new words here", "好" * 300, "great coffee " * 40]


def _train_capturing(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path, train_csv: Path, task: str,
                     columns: dict[str, str], pooling: str = "mean") -> dict[str, Any]:
    """Run ``ecomnlp.train`` and keep the in-memory backbone/head it saves, to compare with what loads."""
    captured: dict[str, Any] = {}
    real_save = ecomnlp.training.save_artifact

    def spy(out, backbone, adapter, head, card, lexical=None):
        captured.update(backbone=backbone, adapter=adapter, head=head, card=card, lexical=lexical)
        return real_save(out, backbone, adapter, head, card, lexical)

    out = tmp_path_factory.mktemp(f"{task}_{pooling}") / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ecomnlp.training, "save_artifact", spy)
        captured["summary"] = quick_train(task, train_csv, out, tiny_encoder, columns=columns, pooling=pooling)
    captured["out"] = out
    return captured


@pytest.fixture(scope="module", params=["mean", "cls"])
def sentiment(request, tmp_path_factory, tiny_encoder: Path, sentiment_csv: Path) -> dict[str, Any]:
    return _train_capturing(tmp_path_factory, tiny_encoder, sentiment_csv, "review_sentiment", {"text": "review"},
                            request.param)


@pytest.fixture(scope="module")
def category(tmp_path_factory, tiny_encoder: Path, sentiment_csv: Path) -> dict[str, Any]:
    return _train_capturing(tmp_path_factory, tiny_encoder, sentiment_csv, "product_classification",
                            {"text": "review", "label": "cat"})


def _in_memory_logits(trained: dict[str, Any], texts: list[str]) -> torch.Tensor:
    backbone = trained["backbone"]
    ids = tokenize(backbone.tokenizer, [texts], trained["card"]["max_length"])
    return ecomnlp.training.predict_logits(backbone, trained["adapter"], trained["head"], ids, 4,
                                           trained["card"]["pooling"])


def test_loaded_model_reproduces_in_memory_predictions(sentiment: dict[str, Any]) -> None:
    expected = _in_memory_logits(sentiment, TEXTS)
    model = ecomnlp.load(sentiment["out"])
    assert model.backbone is not sentiment["backbone"]
    logits = model.logits(TEXTS, batch_size=5)
    assert logits.shape == (len(TEXTS), 2)
    assert torch.allclose(logits, expected, atol=1e-6, rtol=0)
    predictions = model.predict(TEXTS)
    assert [p["label"] for p in predictions] == [r["label"] for r in model.task.decode(expected)]
    assert [p["label"] for p in predictions] == [model.task.labels[i] for i in expected.argmax(-1).tolist()]
    # batch size and input form do not change results
    assert torch.allclose(model.logits(TEXTS, batch_size=1), expected, atol=1e-5, rtol=0)
    assert torch.allclose(model.logits([{"text": t} for t in TEXTS]), logits, atol=1e-6, rtol=0)
    assert model.predict(TEXTS[0]) == model.predict([TEXTS[0]])
    with pytest.raises(KeyError, match=r"input 1 lacks field\(s\) \['text'\]"):
        model.predict([{"review": "x"}])
    with pytest.raises(KeyError, match=r"input 2 lacks field"):  # every row is checked, not the first only
        model.predict([{"text": "x"}, {"review": "x"}])
    with pytest.raises(TypeError, match="input 2 is a str, not a dict as the first"):
        model.predict([{"text": "x"}, "y"])
    with pytest.raises(TypeError, match=r"input 2 is a NoneType: pass texts \(str\)"):  # not predicted as "None"
        model.predict(["x", None])
    assert model.predict([]) == [] and model.logits([]).shape == (0, 2)


def test_card_metrics_match_the_saved_model(sentiment: dict[str, Any], sentiment_csv: Path) -> None:
    """The card's valid metrics are those of the saved weights on the held-out rows, recomputed after loading."""
    from ecomnlp.data import load_rows
    from ecomnlp.training import _split_off

    card = json.loads((sentiment["out"] / "card.json").read_text())
    assert card["metrics"]["valid"] == sentiment["summary"]["metrics"]["valid"]
    assert set(card["metrics"]["valid"]) == {"accuracy", "f1_macro", "examples"}
    model = ecomnlp.load(sentiment["out"])
    rows = load_rows(sentiment_csv, model.task, card["columns"])
    _, valid = _split_off(rows, 0.1, card["training"]["seed"])  # how train() held rows out
    assert len(valid) == card["training"]["valid_examples"]
    targets = torch.tensor([model.task.encode_target(v) for v in valid.labels])
    recomputed = {k: v.item() for k, v in model.task.metrics()(model.logits(valid.texts[0]), targets).items()}
    assert {**recomputed, "examples": len(valid)} == pytest.approx(card["metrics"]["valid"], abs=1e-6)


def test_artifact_directory_is_four_safe_files_and_a_complete_card(sentiment: dict[str, Any],
                                                                   tiny_encoder: Path) -> None:
    out = sentiment["out"]
    assert sorted(p.name for p in out.iterdir()) == ARTIFACT_FILES
    assert sorted(p.name for p in out.parent.iterdir()) == ["model", "model.train"]  # no temp dirs left
    for name in ("adapter_model.safetensors", "head.safetensors"):
        raw = (out / name).read_bytes()
        header = int.from_bytes(raw[:8], "little")  # safetensors: u64 header size, JSON header, raw tensors
        assert isinstance(json.loads(raw[8 : 8 + header]), dict) and not raw.startswith(b"PK")  # no torch.save zip
        with safe_open(str(out / name), framework="pt") as f:
            assert list(f.keys())
    for name in ("adapter_config.json", "card.json"):
        json.loads((out / name).read_text(encoding="utf-8"))

    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert card["format_version"] == 1
    assert card["task"] == "review_sentiment"
    assert card["task_state"]["labels"] == ["0", "1"] and card["task_state"]["mode"] == "binary"
    assert card["schema"] == {"text": ["text"], "label": "label", "numeric": [], "categorical": []}
    assert card["columns"] == {"text": "review"}
    assert card["base_model"]["checksum"] == base_checksum(tiny_encoder)
    assert Path(card["base_model"]["path"]) == tiny_encoder.resolve()
    assert card["pooling"] == sentiment["card"]["pooling"]
    assert isinstance(card["max_length"], int) and 8 <= card["max_length"] <= 128
    assert card["lora"]["r"] == 8
    assert card["ecomnlp_version"] == importlib.metadata.version("ecomnlp")
    assert card["training"]["train_rows_available"] == 48 and card["training"]["steps"] > 0
    assert card["training"]["train_examples"] + card["training"]["valid_examples"] == 48


def test_checkpoint_holds_only_trainable_weights_and_artifact_is_the_best(sentiment: dict[str, Any]) -> None:
    out, adapter = sentiment["out"], sentiment["adapter"]
    best = out.with_name(out.name + ".train") / "checkpoints" / "best.ckpt"
    assert best.is_file()
    assert json.loads((out / "card.json").read_text())["training"]["best_checkpoint"] == str(best)
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    backbone, head = sentiment["backbone"], sentiment["head"]
    lora = {f"backbone.{n}" for n, _ in backbone.named_parameters() if ".lora_" in n and f".{adapter}." in n}
    assert lora and set(state) == lora | {f"head.{k}" for k in head.state_dict()}
    assert not [k for k in state if "encoder.base_model" in k and ".lora_" not in k]  # no frozen base weights
    base_numel = sum(p.numel() for n, p in backbone.named_parameters() if ".lora_" not in n)
    assert sum(v.numel() for v in state.values()) < base_numel / 2

    saved_head = load_file(str(out / "head.safetensors"))
    assert saved_head.keys() == head.state_dict().keys()
    for k, v in saved_head.items():
        assert torch.equal(v, state[f"head.{k}"])
    saved_adapter = load_file(str(out / "adapter_model.safetensors"))
    from_ckpt = {k.removeprefix("backbone.encoder.").replace(f".{adapter}.", "."): v
                 for k, v in state.items() if k.startswith("backbone.")}
    assert saved_adapter.keys() == from_ckpt.keys()
    for k, v in saved_adapter.items():
        assert torch.equal(v, from_ckpt[k])


def test_weight_averaging_keeps_the_averaged_weights(tmp_path: Path, tiny_encoder: Path, sentiment_csv: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from ecomnlp.averaging import TrainableEMA

    seen: dict[str, dict[str, torch.Tensor]] = {}
    real_end = TrainableEMA.on_train_end

    def record(callback: TrainableEMA, trainer: Any, module: Any) -> None:
        seen["raw"] = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        seen["average"] = {n: a.clone() for n, a in callback.average.items()}
        real_end(callback, trainer, module)

    monkeypatch.setattr(TrainableEMA, "on_train_end", record)
    out = tmp_path / "model"
    quick_train("review_sentiment", sentiment_csv, out, tiny_encoder, columns={"text": "review"}, epochs=1,
                trainer={"ema_decay": 0.5})
    state = torch.load(out.with_name("model.train") / "checkpoints" / "best.ckpt", map_location="cpu",
                       weights_only=True)["state_dict"]  # the one validation, at the end of the epoch
    assert state.keys() == seen["raw"].keys()  # trainable weights only
    assert all(torch.equal(state[k], seen["average"][k]) for k in state)
    assert any(not torch.equal(state[k], seen["raw"][k]) for k in state)  # an average, not the last step's weights
    for k, v in load_file(str(out / "head.safetensors")).items():
        assert torch.equal(v, state[f"head.{k}"])


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.1])
def test_weight_averaging_decay_outside_0_1_is_refused(decay: float) -> None:
    from ecomnlp.config import TrainerSettings

    with pytest.raises(ValueError, match=r"trainer\.ema_decay .* got"):
        TrainerSettings(ema_decay=decay)


def test_load_many_shares_one_backbone(sentiment: dict[str, Any], category: dict[str, Any],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    alone = {"review_sentiment": ecomnlp.load(sentiment["out"]).logits(TEXTS),
             "product_classification": ecomnlp.load(category["out"]).logits(TEXTS)}
    built: list[Backbone] = []

    class CountingBackbone(Backbone):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(ecomnlp.predictor, "Backbone", CountingBackbone)
    many = ecomnlp.load_many([sentiment["out"], category["out"]])
    assert len(built) == 1
    assert sorted(many) == ["product_classification", "review_sentiment"]
    assert all(many[name].backbone is many.backbone is built[0] for name in many)
    assert sorted(many.backbone.adapters) == ["product_classification", "review_sentiment"]
    for name in ["review_sentiment", "product_classification", "review_sentiment", "product_classification"]:
        assert torch.allclose(many[name].logits(TEXTS), alone[name], atol=1e-6, rtol=0), name
    assert many.predict("product_classification", ["书的内容很好"])[0]["label"] in ("english", "中文")
    with pytest.raises(KeyError, match="no task 'x'"):
        many["x"]
    with pytest.raises(ValueError, match="same task"):
        ecomnlp.load_many([sentiment["out"], sentiment["out"]])
    named = ecomnlp.load_many({"a": sentiment["out"], "b": sentiment["out"]})
    assert torch.allclose(named["b"].logits(TEXTS), alone["review_sentiment"], atol=1e-6, rtol=0)


def test_loading_on_another_base_is_refused(sentiment: dict[str, Any], category: dict[str, Any],
                                            other_tiny_encoder: Path, tiny_encoder: Path) -> None:
    assert base_checksum(other_tiny_encoder) != base_checksum(tiny_encoder)
    with pytest.raises(ArtifactError, match=r"was trained on base model .* but the loaded base .*own base") as err:
        ecomnlp.load(sentiment["out"], base=str(other_tiny_encoder))
    assert str(sentiment["out"]) in str(err.value) and str(other_tiny_encoder) in str(err.value)
    with pytest.raises(ArtifactError, match="trained on base model"):
        ecomnlp.load_many([sentiment["out"], category["out"]], base=str(other_tiny_encoder))
    assert ecomnlp.load(sentiment["out"], base=str(tiny_encoder)).predict(["x"])  # explicit right base is fine


def test_incomplete_or_foreign_directories_are_refused(sentiment: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a trained task directory"):
        ecomnlp.load(tmp_path)
    for missing in ["head.safetensors", "adapter_model.safetensors"]:
        copy = tmp_path / f"without_{missing}"
        shutil.copytree(sentiment["out"], copy)
        (copy / missing).unlink()
        with pytest.raises(ArtifactError, match=f"incomplete: {missing} is missing"):
            ecomnlp.load(copy)
    future = tmp_path / "future"
    shutil.copytree(sentiment["out"], future)
    card = json.loads((future / "card.json").read_text())
    (future / "card.json").write_text(json.dumps({**card, "format_version": 99}))
    with pytest.raises(ArtifactError, match="unsupported format_version 99"):
        ecomnlp.load(future)


def test_evaluate_writes_metrics_and_png(sentiment: dict[str, Any], category: dict[str, Any],
                                         sentiment_csv: Path, tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    report = ecomnlp.evaluate(str(sentiment["out"]), str(sentiment_csv), str(report_dir))  # card's column mapping
    on_disk = json.loads((report_dir / "metrics.json").read_text(encoding="utf-8"))
    assert on_disk["accuracy"] == report["accuracy"] and on_disk["f1_macro"] == report["f1_macro"]
    assert set(on_disk["per_class"]) == {"0", "1"}
    assert sum(c["support"] for c in on_disk["per_class"].values()) == on_disk["examples"] == 48
    assert on_disk["figures"] == ["confusion_matrix.png"]
    assert (report_dir / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in report_dir.iterdir()) == ["confusion_matrix.png", "metrics.json"]

    # the report agrees with predicting the same rows by hand
    import csv
    with sentiment_csv.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    predicted = [p["label"] for p in ecomnlp.load(sentiment["out"]).predict([r["review"] for r in rows])]
    accuracy = sum(p == r["label"] for p, r in zip(predicted, rows)) / len(rows)
    assert report["accuracy"] == pytest.approx(accuracy)
    assert sum(map(sum, report["confusion_matrix"]["rows_true_cols_predicted"])) == 48

    # Chinese labels: still a PNG (labels by index when no CJK font is installed)
    zh = ecomnlp.evaluate(str(category["out"]), str(sentiment_csv), str(tmp_path / "zh"))
    assert set(zh["per_class"]) == {"english", "中文"}
    assert (tmp_path / "zh" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_refuses_unseen_label(sentiment: dict[str, Any], tmp_path: Path) -> None:
    data = write_csv(tmp_path / "test.csv", ["review", "label"], [["great coffee", "1"], ["stale tea", "2"]])
    with pytest.raises(DataError, match=r"test.csv: row 2, column 'label': label '2' was not seen"):
        ecomnlp.evaluate(str(sentiment["out"]), str(data), str(tmp_path / "report"))
    assert not (tmp_path / "report" / "metrics.json").exists()


def _fail(*args: Any, **kwargs: Any) -> None:
    raise OSError("disk full")


@pytest.mark.parametrize("stage", ["adapter", "head", "swap"])
def test_interrupted_save_leaves_previous_artifact_intact(sentiment: dict[str, Any], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    out = tmp_path / "model"
    shutil.copytree(sentiment["out"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    backbone, adapter, head, card = (sentiment[k] for k in ("backbone", "adapter", "head", "card"))
    changed_head = copy.deepcopy(head)
    with torch.no_grad():
        for p in changed_head.parameters():
            p.add_(1.0)  # new weights that must not reach the old directory
    if stage == "adapter":
        monkeypatch.setattr(backbone, "save_adapter", _fail)
    elif stage == "head":
        monkeypatch.setattr("safetensors.torch.save_file", _fail)
    else:
        monkeypatch.setattr("ecomnlp.artifact.replace_dir", _fail)
    with pytest.raises(OSError, match="disk full"):
        save_artifact(out, backbone, adapter, changed_head, {**card, "note": "second"})
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary directory left behind
    assert ecomnlp.load(out).predict(["great coffee"])

    # a save that completes replaces the directory whole, leaving nothing else behind
    save_artifact(out, backbone, adapter, head, {**card, "note": "second"})
    assert json.loads((out / "card.json").read_text())["note"] == "second"
    assert sorted(p.name for p in out.iterdir()) == ARTIFACT_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_artifact_files_get_the_usual_permissions(sentiment: dict[str, Any]) -> None:
    """Built in private temp folders, but published readable like any file the user writes (umask)."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    out = sentiment["out"]
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask
    for f in out.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f.name


def test_training_reshuffles_batches_every_epoch(tmp_path: Path, tiny_encoder: Path, sentiment_csv: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from ecomnlp.data import LengthGroupedBatches

    seen: list[int] = []
    real = LengthGroupedBatches.set_epoch

    def record(sampler: LengthGroupedBatches, epoch: int) -> None:
        seen.append(epoch)
        real(sampler, epoch)

    monkeypatch.setattr(LengthGroupedBatches, "set_epoch", record)
    quick_train("review_sentiment", sentiment_csv, tmp_path / "out", tiny_encoder, columns={"text": "review"}, epochs=3)
    assert seen == [0, 1, 2]


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 is Linux's")
def test_replacing_a_directory_is_one_swap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the system can swap two paths, the old directory is never absent: no rename of it aside happens."""
    from ecomnlp import artifact

    out = tmp_path / "model"
    out.mkdir()
    (out / "card.json").write_text("old")
    renamed = []
    real = os.replace
    monkeypatch.setattr(artifact.os, "replace", lambda a, b: (renamed.append((a, b)), real(a, b)))
    with artifact.atomic_dir(out) as tmp:
        (tmp / "card.json").write_text("new")
    assert (out / "card.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert renamed == []
