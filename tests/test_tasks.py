"""The task registry, a task defined outside the library, and the classification tasks."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import pytest
import torch
from torch import nn
from torchmetrics import Metric, MetricCollection

import ecomnlp
from conftest import NEGATIVE, POSITIVE, quick_train, write_csv
from ecomnlp.task import Schema, build_task, register_task, task_class, task_names, task_state


# --- a task defined here, outside ecomnlp/: word-count regression with its own head, loss, metric, report ---

class NegMAE(Metric):
    """Mean absolute error, negated so that higher is better (tasks' monitors are maximised)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("error", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.error += (logits[:, 0].float() - targets.float()).abs().sum()
        self.count += targets.numel()

    def compute(self) -> torch.Tensor:
        return -self.error / self.count


@register_task
@dataclass
class WordCount:
    """Toy regression: how many words a text has."""

    name: ClassVar[str] = "toy_word_count"
    schema: ClassVar[Schema] = Schema(text=("text",), label="words")
    monitor: ClassVar[str] = "neg_mae"

    scale: float = 0.0  # fitted on the training labels; targets are words / scale

    def fit(self, labels: Sequence[Any]) -> None:
        numbers = [float(v) for v in labels if str(v).replace(".", "", 1).isdigit()]  # bad ones fail in encode
        self.scale = max(numbers, default=1.0)

    def encode_target(self, value: Any) -> float:
        try:
            return float(value) / self.scale
        except ValueError:
            raise ValueError(f"'{value}' is not a number of words") from None

    def build_head(self, hidden_size: int) -> nn.Module:
        return nn.Sequential(nn.Linear(hidden_size, 16), nn.Tanh(), nn.Linear(16, 1))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(logits[:, 0].float(), targets.float())

    def metrics(self) -> MetricCollection:
        return MetricCollection({"neg_mae": NegMAE()})

    def decode(self, logits: torch.Tensor) -> list[dict[str, Any]]:
        return [{"words": v * self.scale} for v in logits[:, 0].tolist()]

    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor, out_dir: Path) -> dict[str, Any]:
        errors = (logits[:, 0] - targets).abs() * self.scale
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "errors.txt").write_text("\n".join(f"{e:.3f}" for e in errors.tolist()))
        return {"mae_words": errors.mean().item(), "examples": len(targets)}


def _word_rows() -> list[tuple[str, int]]:
    words = "great coffee fast shipping the blender broke after a week tea tastes stale refund took too long".split()
    return [(" ".join(words[(i * 7) % 10 : (i * 7) % 10 + n]), n) for i in range(4) for n in range(1, 9)]


def test_registry_lists_builtin_and_local_tasks() -> None:
    names = task_names()
    assert {"product_classification", "review_sentiment", "toy_word_count"} <= set(names)
    assert names == sorted(names)
    assert task_class("toy_word_count") is WordCount


def test_task_defined_outside_library_trains_saves_loads_predicts(tmp_path: Path, tiny_encoder: Path) -> None:
    rows = _word_rows()
    train = write_csv(tmp_path / "words.csv", ["sentence", "n"], rows)
    out = tmp_path / "words_model"
    summary = quick_train("toy_word_count", train, out, tiny_encoder, columns={"text": "sentence", "words": "n"},
                          epochs=4)
    assert set(summary["metrics"]["valid"]) == {"neg_mae", "examples"}
    assert math.isfinite(summary["metrics"]["valid"]["neg_mae"])

    card = json.loads((out / "card.json").read_text())
    assert card["task"] == "toy_word_count"
    assert card["task_state"] == {"scale": 8.0}
    assert card["schema"]["label"] == "words"

    model = ecomnlp.load(out)
    assert isinstance(model.task, WordCount) and model.task.scale == 8.0
    predictions = model.predict(["great coffee", "the blender broke after a week"])
    assert len(predictions) == 2 and all(set(p) == {"words"} and math.isfinite(p["words"]) for p in predictions)
    assert model.logits(["great coffee"]).shape == (1, 1)

    report = ecomnlp.evaluate(str(out), str(train), str(tmp_path / "report"))  # columns from the card
    assert report["task"] == "toy_word_count" and report["examples"] == len(rows)
    assert report["mae_words"] >= 0
    assert (tmp_path / "report" / "errors.txt").read_text().count("\n") == len(rows) - 1
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["mae_words"] == report["mae_words"]


def test_task_own_label_error_names_row(tmp_path: Path, tiny_encoder: Path) -> None:
    train = write_csv(tmp_path / "words.csv", ["text", "words"], [["a b", "2"], ["a", "one"]] + [["a b c", "3"]] * 10)
    with pytest.raises(ValueError, match=r"words.csv: row 2, column 'words': 'one' is not a number of words"):
        quick_train("toy_word_count", train, tmp_path / "out", tiny_encoder)


def test_unknown_task_and_options(tmp_path: Path, sentiment_csv: Path, tiny_encoder: Path) -> None:
    with pytest.raises(KeyError, match="unknown task 'no_such_task'.*review_sentiment"):
        build_task("no_such_task")
    with pytest.raises(ValueError, match=r"no option\(s\) \['colour'\].*'multi_label'"):
        build_task("product_classification", {"colour": "red"})
    with pytest.raises(ValueError, match="mode must be 'binary' or 'stars'"):
        build_task("review_sentiment", {"mode": "five"})
    with pytest.raises(ValueError, match="single-label"):
        build_task("review_sentiment", {"multi_label": True})
    with pytest.raises(KeyError, match="unknown task"):
        quick_train("no_such_task", sentiment_csv, tmp_path / "out", tiny_encoder)
    with pytest.raises(ValueError, match="no option"):
        quick_train("review_sentiment", sentiment_csv, tmp_path / "out", tiny_encoder, task_options={"bogus": 1})
    assert not (tmp_path / "out").exists()


def test_register_task_rejects_non_dataclass_and_taken_name() -> None:
    assert task_class("review_sentiment").__name__ == "ReviewSentiment"  # built-ins discovered first
    with pytest.raises(TypeError, match="must be a dataclass"):
        @register_task
        class NotADataclass:
            name = "toy_not_dataclass"

    with pytest.raises(ValueError, match="'review_sentiment' is taken"):
        @register_task
        @dataclass
        class Impostor:
            name: ClassVar[str] = "review_sentiment"

    assert task_class("review_sentiment").__name__ == "ReviewSentiment"


# --- classification ---

def test_single_label_fit_encode_decode() -> None:
    task = build_task("product_classification")
    task.fit(["phones", "books", " phones ", "books", 7])
    assert task.labels == ["7", "books", "phones"]
    assert task.monitor == "accuracy"
    assert [task.encode_target(v) for v in ["7", 7, " books", "phones"]] == [0, 0, 1, 2]
    with pytest.raises(ValueError, match="'fruit' was not seen in training"):
        task.encode_target("fruit")
    rows = task.decode(torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 2.0]]))
    assert [r["label"] for r in rows] == ["books", "phones"]
    assert rows[0]["probability"] == pytest.approx(math.exp(3) / (math.exp(3) + 2))
    assert list(rows[1]["probabilities"]) == task.labels
    assert sum(rows[1]["probabilities"].values()) == pytest.approx(1.0)
    assert "expected" not in rows[0]
    assert build_task("product_classification", task_state(task)).labels == task.labels  # card round trip


@pytest.mark.parametrize("labels", [["books", "books", " books"], [], ["a|b"]])
def test_fewer_than_two_labels_is_refused(labels: list[str]) -> None:
    with pytest.raises(ValueError, match="at least 2 distinct labels"):
        build_task("product_classification").fit(labels)


def test_multi_label_fit_encode_decode_evaluate(tmp_path: Path) -> None:
    task = build_task("product_classification", {"multi_label": True})
    task.fit(["kitchen|gifts", "gifts", "toys | kitchen", "kitchen||"])
    assert task.labels == ["gifts", "kitchen", "toys"]
    assert task.monitor == "f1_macro"
    assert task.encode_target("toys|gifts") == [1.0, 0.0, 1.0]
    assert task.encode_target("kitchen") == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="'books' was not seen"):
        task.encode_target("kitchen|books")
    rows = task.decode(torch.tensor([[3.0, -3.0, 0.5], [-3.0, -3.0, -3.0]]))
    assert rows[0]["labels"] == ["gifts", "toys"] and rows[1]["labels"] == []
    assert rows[0]["probabilities"]["kitchen"] == pytest.approx(torch.sigmoid(torch.tensor(-3.0)).item())
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    report = task.evaluate(torch.tensor([[3.0, -3.0, 3.0], [-3.0, 3.0, -3.0]]), targets, tmp_path)
    assert report["accuracy"] == 1.0 and report["f1_macro"] == 1.0 and report["examples"] == 2
    assert {k: v["support"] for k, v in report["per_class"].items()} == {"gifts": 1, "kitchen": 1, "toys": 1}

    strict = build_task("product_classification", {"multi_label": True, "threshold": 0.9, "labels": task.labels})
    assert strict.decode(torch.tensor([[3.0, -3.0, 0.5]]))[0]["labels"] == ["gifts"]


def test_multi_label_trains_and_predicts_label_lists(tmp_path: Path, tiny_encoder: Path) -> None:
    rows = [(t, ("positive|" if t in POSITIVE else "negative|") + ("en" if t.isascii() else "zh"))
            for t in POSITIVE + NEGATIVE] * 4
    train = write_csv(tmp_path / "multi.csv", ["title", "tags"], rows)
    out = tmp_path / "multi"
    summary = quick_train("product_classification", train, out, tiny_encoder, columns={"text": "title", "label": "tags"},
                          task_options={"multi_label": True})
    assert set(summary["metrics"]["valid"]) == {"accuracy", "f1_macro", "f1_micro", "examples"}
    model = ecomnlp.load(out)
    assert model.task.multi_label and model.task.labels == ["en", "negative", "positive", "zh"]
    predictions = model.predict([r[0] for r in rows[:12]])
    for p in predictions:
        assert list(p["probabilities"]) == model.task.labels
        assert p["labels"] == [label for label, q in p["probabilities"].items() if q >= 0.5]
    logits = model.logits([r[0] for r in rows[:12]])
    assert logits.shape == (12, 4)
    assert torch.allclose(torch.tensor([list(p["probabilities"].values()) for p in predictions]), logits.sigmoid())
    report = ecomnlp.evaluate(str(out), str(train), str(tmp_path / "report"))
    assert set(report["per_class"]) == set(model.task.labels)
    assert "confusion_matrix" not in report


def test_binary_sentiment_refuses_three_labels(tmp_path: Path, tiny_encoder: Path) -> None:
    task = build_task("review_sentiment")
    with pytest.raises(ValueError, match=r"exactly 2 labels.*\['0', '1', '2'\]"):
        task.fit(["0", "1", "2", "1"])
    task.fit(["pos", "neg", "pos"])
    assert task.labels == ["neg", "pos"] and not task.ordinal
    train = write_csv(tmp_path / "three.csv", ["text", "label"], [[t, str(i % 3)] for i, t in enumerate(POSITIVE * 4)])
    with pytest.raises(ValueError, match="exactly 2 labels"):
        quick_train("review_sentiment", train, tmp_path / "out", tiny_encoder)


def test_stars_order_expected_and_mae(tmp_path: Path) -> None:
    task = build_task("review_sentiment", {"mode": "stars"})
    task.fit(["10", "9", "1", "2", " 2", 3])
    assert task.ordinal and task.labels == ["1", "2", "3", "9", "10"]
    assert task.encode_target(10) == 4 and task.encode_target("9") == 3
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, 8.0], [8.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    rows = task.decode(logits)
    assert [r["label"] for r in rows[:2]] == ["10", "1"]
    for row in rows:
        assert row["expected"] == pytest.approx(sum(float(k) * p for k, p in row["probabilities"].items()))
    assert rows[2]["expected"] == pytest.approx((1 + 2 + 3 + 9 + 10) / 5)
    assert 9.9 < rows[0]["expected"] <= 10
    report = task.evaluate(logits, torch.tensor([3, 1, 0]), tmp_path)  # predicted 10, 1, 1 vs true 9, 2, 1
    assert report["mae"] == pytest.approx((1 + 1 + 0) / 3)
    assert report["confusion_matrix"]["labels"] == task.labels
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="ordinal labels must be numbers \\(e.g. 1-5 stars\\), got 'five'"):
        build_task("review_sentiment", {"mode": "stars"}).fit(["1", "five"])
    stars = build_task("review_sentiment", {"mode": "stars"})
    stars.fit(["4", 4.0, "4.0", 5, " 5 ", "1", 2.5])  # a CSV's "4" and a JSONL's 4.0 are one rating
    assert stars.labels == ["1", "2.5", "4", "5"] and stars.encode_target("4.0") == stars.encode_target(4) == 2


def test_stars_train_predict_evaluate(tmp_path: Path, tiny_encoder: Path) -> None:
    texts = POSITIVE + NEGATIVE
    stars = ["10", "9", "10", "9", "10", "9", "1", "2", "1", "2", "1", "2"]
    train = write_csv(tmp_path / "stars.csv", ["review", "stars"], list(zip(texts, stars)) * 4)
    out = tmp_path / "stars"
    quick_train("review_sentiment", train, out, tiny_encoder, columns={"text": "review", "label": "stars"},
                task_options={"mode": "stars"})
    model = ecomnlp.load(out)
    assert model.task.labels == ["1", "2", "9", "10"]
    for p in model.predict(texts):
        assert 1.0 <= p["expected"] <= 10.0 and p["label"] in model.task.labels
    report = ecomnlp.evaluate(str(out), str(train), str(tmp_path / "report"))
    assert 0.0 <= report["mae"] <= 9.0
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["mae"] == report["mae"]


def test_multi_label_metrics_agree_with_decode_when_every_logit_lies_in_0_1() -> None:
    """torchmetrics reads [0, 1] inputs as probabilities: logits of 0.3 (probability 0.57) must count as predicted."""
    task = build_task("product_classification", {"multi_label": True})
    task.fit(["a|b", "b"])
    logits, targets = torch.full((2, 2), 0.3), torch.ones(2, 2, dtype=torch.long)
    assert [r["labels"] for r in task.decode(logits)] == [["a", "b"], ["a", "b"]]
    assert {k: v.item() for k, v in task.metrics()(logits, targets).items()} == {
        "accuracy": 1.0, "f1_macro": 1.0, "f1_micro": 1.0}
