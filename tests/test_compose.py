"""Adapter composition: weighted merges of one task's adapters."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ecomnlp
from conftest import quick_train


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path, sentiment_csv: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compose")
    a, b = root / "shop_a", root / "shop_b"
    quick_train("review_sentiment", sentiment_csv, a, tiny_encoder, columns={"text": "review"})
    quick_train("review_sentiment", sentiment_csv, b, tiny_encoder, columns={"text": "review"}, trainer={"seed": 7})
    return a, b


TEXTS = ["great coffee, fast shipping", "酒店早餐很难吃", "refund took too long"]


def test_weight_one_and_zero_reproduces_the_first_adapter(two_domains: tuple[Path, Path], tmp_path: Path) -> None:
    from ecomnlp.cli import main

    a, b = two_domains
    main(["merge", "--models", json.dumps([str(a), str(b)]), "--weights", "[1.0, 0.0]", "--out", str(tmp_path / "m")])
    merged, first = ecomnlp.load(tmp_path / "m"), ecomnlp.load(a)
    assert torch.allclose(merged.logits(TEXTS), first.logits(TEXTS), atol=1e-5)
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert [m["weight"] for m in card["merged_from"]] == [1.0, 0.0]


def test_half_half_merge_differs_from_both_and_loads_alone(two_domains: tuple[Path, Path], tmp_path: Path) -> None:
    from ecomnlp.compose import merge

    a, b = two_domains
    merge([str(a), str(b)], [0.5, 0.5], str(tmp_path / "m"))
    logits = {p: ecomnlp.load(p).logits(TEXTS) for p in (a, b, tmp_path / "m")}
    assert not torch.allclose(logits[tmp_path / "m"], logits[a]) and not torch.allclose(logits[tmp_path / "m"], logits[b])
    assert (tmp_path / "m" / "adapter_model.safetensors").exists()


def test_merge_refuses_different_tasks(two_domains: tuple[Path, Path], tmp_path: Path, tiny_encoder: Path,
                                       sentiment_csv: Path) -> None:
    from ecomnlp.compose import merge

    category = tmp_path / "category"
    quick_train("product_classification", sentiment_csv, category, tiny_encoder,
                columns={"text": "review", "label": "cat"}, epochs=1)
    with pytest.raises(ValueError, match="task 'product_classification' differs"):
        merge([str(two_domains[0]), str(category)], [0.5, 0.5], str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_merging_classifiers_with_lexical_parts_keeps_the_encoder_part_only(tiny_encoder: Path, sentiment_csv: Path,
                                                                           tmp_path: Path) -> None:
    """The merged directory loads (its card does not promise a lexical part it lacks) and predicts without one."""
    from ecomnlp.compose import merge

    sources = [tmp_path / "a", tmp_path / "b"]
    for path, seed in zip(sources, (1, 7)):
        quick_train("review_sentiment", sentiment_csv, path, tiny_encoder, columns={"text": "review"}, epochs=1,
                    trainer={"seed": seed}, lexical=True)
    merge([str(p) for p in sources], [1.0, 0.0], str(tmp_path / "m"))
    merged, first = ecomnlp.load(tmp_path / "m"), ecomnlp.load(sources[0])
    assert first.lexical is not None and merged.lexical is None
    assert "lexical" not in json.loads((tmp_path / "m" / "card.json").read_text())
    first.lexical = None
    assert torch.allclose(merged.logits(TEXTS), first.logits(TEXTS), atol=1e-5)
