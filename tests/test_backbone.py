"""The shared encoder: frozen base, one trainable adapter at a time, peft-format saving, pooling."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModel

from ecomnlp.backbone import Backbone, lora_config
from ecomnlp.config import LoraSettings
from ecomnlp.data import collate

TEXTS = ["great coffee, fast shipping", "酒店早餐很难吃", "the blender broke after a week and the refund took too long"]


def _random_lora(seed: int) -> LoraConfig:
    """LoRA with random (non-zero) B so that the adapter changes the output from the start."""
    torch.manual_seed(seed)
    config = lora_config(LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["query", "key", "value", "dense"]))
    config.init_lora_weights = False
    return config


def _batch(backbone: Backbone, texts: list[str]) -> dict[str, torch.Tensor]:
    ids = backbone.tokenizer(texts)["input_ids"]
    return collate(ids, backbone.tokenizer.pad_token_id)


@pytest.fixture
def backbone(tiny_encoder: Path) -> Backbone:
    return Backbone(tiny_encoder).eval()


def _trainable(backbone: Backbone) -> set[str]:
    return {n for n, p in backbone.named_parameters() if p.requires_grad}


def test_base_frozen_and_only_active_adapter_trainable(backbone: Backbone) -> None:
    assert not _trainable(backbone)  # fresh: everything frozen
    base_count = sum(1 for _ in backbone.encoder.parameters())

    def lora_of(adapter: str) -> set[str]:
        return {n for n, _ in backbone.named_parameters() if ".lora_" in n and f".{adapter}." in n}

    backbone.add_adapter("sentiment", lora_config(LoraSettings(4, 8, 0.1, ["query", "value"])))
    assert backbone.adapters == ["sentiment"]
    assert lora_of("sentiment") and _trainable(backbone) == lora_of("sentiment")  # base weights all frozen
    assert sum(1 for n, _ in backbone.named_parameters() if ".lora_" not in n) == base_count
    assert not any(".pooler." in n for n in lora_of("sentiment"))

    backbone.add_adapter("category", lora_config(LoraSettings(4, 8, 0.1, ["query", "value"])))
    assert sorted(backbone.adapters) == ["category", "sentiment"]
    assert _trainable(backbone) == lora_of("category")  # the new one is active; the first is frozen now

    backbone.use("sentiment", trainable=True)
    assert _trainable(backbone) == lora_of("sentiment")
    backbone.use("sentiment")  # inference
    assert not _trainable(backbone)


def test_adapter_name_errors(backbone: Backbone) -> None:
    backbone.add_adapter("a", lora_config(LoraSettings(4, 8, 0.0, ["query"])))
    with pytest.raises(ValueError, match="already exists"):
        backbone.add_adapter("a", lora_config(LoraSettings(4, 8, 0.0, ["query"])))
    with pytest.raises(KeyError, match=r"no adapter 'b'; loaded: \['a'\]"):
        backbone.use("b")


@torch.no_grad()
def test_two_adapters_differ_and_switching_back_is_exact(backbone: Backbone) -> None:
    batch = _batch(backbone, TEXTS)
    plain = backbone(**batch)
    backbone.add_adapter("a", _random_lora(1))
    backbone.use("a")
    out_a = backbone(**batch)
    backbone.add_adapter("b", _random_lora(2))
    backbone.use("b")
    out_b = backbone(**batch)
    assert not torch.allclose(out_a, plain, atol=1e-4)
    assert not torch.allclose(out_a, out_b, atol=1e-4)
    backbone.use("a")
    assert torch.equal(backbone(**batch), out_a)
    backbone.use("b")
    assert torch.equal(backbone(**batch), out_b)


@torch.no_grad()
def test_fresh_lora_starts_as_the_base(backbone: Backbone) -> None:
    """peft's default init (B = 0): a new adapter does not change the output before training."""
    batch = _batch(backbone, TEXTS)
    plain = backbone(**batch)
    backbone.add_adapter("a", lora_config(LoraSettings(4, 8, 0.0, ["query", "value"])))
    backbone.eval()
    assert torch.allclose(backbone(**batch), plain, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("name", ["default", "review_sentiment"])
def test_saved_adapter_loads_in_plain_peft(backbone: Backbone, tiny_encoder: Path, tmp_path: Path, name: str) -> None:
    backbone.add_adapter(name, _random_lora(3))
    backbone.add_adapter("other", _random_lora(4))  # must not leak into the saved folder
    out = tmp_path / "adapter"
    out.mkdir()
    backbone.save_adapter(name, out)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["inference_mode"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary folder left behind

    batch = _batch(backbone, TEXTS)
    backbone.use(name)
    backbone.eval()
    expected = backbone(**batch)
    plain = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_encoder), str(out)).eval()
    hidden = plain(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    assert torch.allclose((hidden * mask).sum(1) / mask.sum(1), expected, atol=1e-6)

    # ...and back into a Backbone under another name
    again = Backbone(tiny_encoder).eval()
    again.load_adapter("reloaded", out)
    assert not any(p.requires_grad for p in again.parameters())
    assert torch.allclose(again(**batch), expected, atol=1e-6)


@torch.no_grad()
def test_mean_and_cls_pooling(backbone: Backbone) -> None:
    backbone.add_adapter("a", _random_lora(5))
    backbone.eval()
    batch = _batch(backbone, TEXTS)
    hidden = backbone.encoder(**batch).last_hidden_state
    cls = backbone(**batch, pooling="cls")
    mean = backbone(**batch, pooling="mean")
    assert cls.shape == mean.shape == (len(TEXTS), backbone.hidden_size)
    assert torch.equal(cls, hidden[:, 0])
    for i, length in enumerate(batch["attention_mask"].sum(1).tolist()):
        assert torch.allclose(mean[i], hidden[i, :length].mean(0), atol=1e-6)
    assert not torch.allclose(mean, cls, atol=1e-3)
    assert torch.equal(backbone(**batch), mean)  # mean is the default


@torch.no_grad()
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_does_not_change_pooled_vectors(backbone: Backbone, pooling: str) -> None:
    backbone.add_adapter("a", _random_lora(6))
    backbone.eval()
    batch = _batch(backbone, TEXTS)
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    together = backbone(**batch, pooling=pooling)
    for i, text in enumerate(TEXTS):
        alone = backbone(**_batch(backbone, [text]), pooling=pooling)
        assert torch.allclose(together[i], alone[0], atol=1e-5)


def test_base_dropout_zero_removes_the_base_noise_while_training(tiny_encoder: Path) -> None:
    """dropout=0: two training-mode passes agree; with the pretrained config's dropout (0.1) they differ."""
    agree = {}
    for dropout in (None, 0.0):
        backbone = Backbone(tiny_encoder, dropout=dropout).train()
        batch = _batch(backbone, TEXTS)
        first, second = (backbone.encoder(**batch).last_hidden_state for _ in range(2))
        agree[dropout] = torch.equal(first, second)
    assert agree == {None: False, 0.0: True}
    with pytest.raises(ValueError, match="base dropout must be in"):
        Backbone(tiny_encoder, dropout=1.0)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_new_adapters_take_the_backbones_mode(backbone: Backbone, tmp_path: Path, mode: str) -> None:
    """``embed`` trusts the backbone's own flag (it skips ``eval()`` when it is already off), so adapters added or
    loaded later must not bring modules in the other mode (peft builds them training): LoRA dropout would run."""
    lora = lora_config(LoraSettings(r=4, alpha=8, dropout=0.5, target_modules=["query", "value"]))
    backbone.add_adapter("saved", lora)
    backbone.save_adapter("saved", tmp_path)
    backbone.train(mode == "train")
    backbone.add_adapter("added", lora_config(LoraSettings(r=4, alpha=8, dropout=0.5, target_modules=["query"])))
    backbone.load_adapter("loaded", tmp_path)
    backbone.add_weighted_adapter(["saved", "loaded"], [0.5, 0.5], "merged", "cat")  # as `ecomnlp merge` does
    assert {m.training for m in backbone.modules()} == {mode == "train"}
