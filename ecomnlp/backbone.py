"""The shared encoder: one frozen pretrained base, one named peft LoRA adapter per task."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from .config import LoraSettings

Pooling = Literal["mean", "cls"]


def dropout_overrides(base_dir: Path, dropout: float | None) -> dict[str, float]:
    """Config fields that set the dropout of the model in ``base_dir`` to ``dropout`` (none for None)."""
    if dropout is None:
        return {}
    if not 0 <= dropout < 1:
        raise ValueError(f"base dropout must be in [0, 1), got {dropout}")
    config = AutoConfig.from_pretrained(base_dir).to_dict()
    return {name: dropout for name, value in config.items() if "dropout" in name and isinstance(value, float)}


class Backbone(nn.Module):
    """Frozen encoder + named adapters. Switching task switches adapter, never the base."""

    def __init__(self, base_dir: str | Path, dropout: float | None = None) -> None:
        """``dropout``: the base's own dropout probabilities while training (every float field of its config
        whose name has "dropout" in it, e.g. BERT's hidden and attention dropout); None keeps the pretrained
        config's. The base is frozen either way: its dropout only adds noise to what the adapters see."""
        super().__init__()
        self.base_dir = Path(base_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.base_dir)
        encoder = AutoModel.from_pretrained(self.base_dir, dtype=torch.float32, **dropout_overrides(self.base_dir, dropout))
        encoder.requires_grad_(False)
        self.encoder: nn.Module = encoder
        self.hidden_size: int = encoder.config.hidden_size
        self.max_positions: int = min(
            getattr(encoder.config, "max_position_embeddings", 512), self.tokenizer.model_max_length
        )

    @property
    def adapters(self) -> list[str]:
        return list(self.encoder.peft_config) if isinstance(self.encoder, PeftModel) else []

    @property
    def active(self) -> str | None:
        """The active adapter's name; None without adapters."""
        return self.encoder.active_adapter if isinstance(self.encoder, PeftModel) else None

    def add_adapter(self, name: str, config: LoraConfig) -> None:
        """A new trainable adapter ``name``, made active."""
        if name in self.adapters:
            raise ValueError(f"adapter '{name}' already exists")
        if any(".pooler." in f".{n}." for n, _ in self.encoder.named_modules()):
            config.exclude_modules = r".*pooler.*"  # unused by our pooling: no adapter weights there
        if isinstance(self.encoder, PeftModel):
            self.encoder.add_adapter(name, config)
        else:
            self.encoder = get_peft_model(self.encoder, config, adapter_name=name)
        self.train(self.training)  # the new adapter's modules in the backbone's mode (peft builds them training)
        self.use(name, trainable=True)

    def load_adapter(self, name: str, path: str | Path, trainable: bool = False) -> None:
        """Load a saved adapter (peft format) under ``name``; frozen unless ``trainable``."""
        if isinstance(self.encoder, PeftModel):
            self.encoder.load_adapter(str(path), adapter_name=name, is_trainable=trainable)
        else:
            self.encoder = PeftModel.from_pretrained(self.encoder, str(path), adapter_name=name, is_trainable=trainable)
        self.train(self.training)
        self.use(name, trainable=trainable)

    def add_weighted_adapter(self, sources: list[str], weights: list[float], name: str, combination: str) -> None:
        """A new frozen adapter ``name``: peft's weighted combination of the ``sources`` (``combination``: e.g.
        "cat", the exact weighted sum of their updates)."""
        self.encoder.add_weighted_adapter(sources, weights, name, combination_type=combination)
        self.train(self.training)

    def use(self, name: str, trainable: bool = False) -> None:
        """Make ``name`` the active adapter; only it can be trainable."""
        if name not in self.adapters:
            raise KeyError(f"no adapter '{name}'; loaded: {self.adapters}")
        self.encoder.set_adapter(name, inference_mode=not trainable)

    def save_adapter(self, name: str, out: str | Path) -> None:
        """Write adapter ``name`` in peft's own format (adapter_config.json + adapter_model.safetensors)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            self.encoder.save_pretrained(tmp, selected_adapters=[name])
            saved = Path(tmp) / name if (Path(tmp) / name).is_dir() else Path(tmp)
            config = json.loads((saved / "adapter_config.json").read_text())
            config["inference_mode"] = True
            (saved / "adapter_config.json").write_text(json.dumps(config, indent=2))
            for f in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.move(saved / f, out / f)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling = "mean") -> torch.Tensor:
        """Pooled sentence vectors through the active adapter."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def lora_config(lora: LoraSettings, task_type: str | None = None) -> LoraConfig:
    """peft's LoraConfig for ``lora`` (``task_type`` e.g. ``"CAUSAL_LM"`` for a language model)."""
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      layers_to_transform=lora.layers, bias="none", task_type=task_type)
