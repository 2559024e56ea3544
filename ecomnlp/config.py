"""Settings shared by the commands. Plain dataclasses with no heavy imports, so the CLI
(`ecomnlp --help`) stays fast; YAML configs mirror these fields one to one."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class DataConfig:
    """Where the rows come from and how they become batches.

    ``columns`` maps the task's field names to the file's column names, e.g.
    ``{text: review, label: cat}``; fields not listed are read under their own name.
    Rows are counted from 1, the CSV header not included.
    """

    train: str | None = None
    valid: str | None = None
    test: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    on_bad_row: Literal["skip", "fail"] = "skip"
    valid_fraction: float = 0.1
    max_train_examples: int | None = None
    max_length: int | None = None
    length_percentile: float = 98.0
    batch_size: int = 32
    eval_batch_size: int = 128


@dataclass
class TaskSpec:
    """One task of a joint run (``train_multitask``): a registered task, its rows, its options."""

    task: str
    data: DataConfig
    task_options: dict[str, Any] | None = None


@dataclass
class LoraSettings:
    """peft LoRA hyper-parameters of a task's adapter. ``layers``: the layer indices that get LoRA
    (default all); adapting only the top layers spares the backward pass through the lower ones."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])
    layers: list[int] | None = None


@dataclass
class TrainerSettings:
    """Optimisation and Lightning Trainer settings.

    ``precision`` None means fp32 on CPU and bf16-mixed on a GPU that supports it.
    ``val_check_interval`` is a fraction of an epoch (float) or a number of steps (int).
    ``ema_decay``: when set, validation, the best checkpoint and the final weights use an exponential
    moving average of the trainable weights (``ecomnlp.averaging``), e.g. 0.998.
    """

    max_epochs: int = 1
    max_steps: int = -1
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    gradient_clip_val: float = 1.0
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    precision: str | None = None
    seed: int = 42
    monitor: str | None = None
    patience: int = 3
    val_check_interval: float | int = 1.0
    log_every_n_steps: int = 10
    logger: Literal["csv", "tensorboard"] = "csv"
    progress_bar: bool = True
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"trainer.ema_decay must be between 0 and 1 (exclusive), got {self.ema_decay}")


@dataclass
class ChatDataConfig:
    """Support dialogues, the knowledge base they are grounded on, and held-out questions.

    ``train`` / ``valid``: JSONL conversations (``{"messages": [...], "kb": [...]}``, see
    ``ecomnlp.chat_data``); without ``valid``, ``valid_fraction`` of ``train`` is held out.
    ``questions``: JSONL ``{"question": ..., "kb": id | null}``; the hand-off threshold is chosen on
    them (null: the knowledge base does not answer it). Each reply is trained with the ``top_k``
    passages retrieved for its question, the right one always among them.
    """

    train: str
    kb: str
    valid: str | None = None
    questions: str | None = None
    valid_fraction: float = 0.1
    top_k: int = 3
    max_length: int = 768
    batch_size: int = 8
    eval_batch_size: int = 8


LLAMA_LORA = LoraSettings(r=16, alpha=32, dropout=0.05,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class RetrievalSettings:
    """How the support bot retrieves. ``example_questions``: the training dialogues' questions join the
    knowledge-base entries they were answered from (an entry then scores by its passage and its best
    question). The retrieval adapter on the shared encoder is trained contrastively on those questions
    (InfoNCE over all entries, ``temperature``); 0 ``epochs``: the base encoder alone. ``rerank`` > 0: the
    causal LM re-ranks the encoder's top ``rerank`` entries (``ecomnlp.rerank``, its weight chosen on the
    held-out questions); 0: the encoder's order."""

    example_questions: bool = True
    rerank: int = 0
    epochs: int = 8
    lr: float = 5e-4
    batch_size: int = 32
    temperature: float = 0.05
    patience: int = 3
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=8, alpha=16, dropout=0.1))


@dataclass
class GenerationSettings:
    """How to decode a reply."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = deterministic greedy decoding
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)  # stop sequences (text); the eos token always stops
    seed: int | None = None  # sampling seed (reproducible sampling)
    num_beams: int = 1  # > 1: beam search (temperature 0 only); the pieces all come when the search ends

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {self.num_beams}")
        if self.num_beams > 1 and self.temperature != 0:
            raise ValueError(f"beam search (num_beams={self.num_beams}) is deterministic: temperature must be 0, "
                             f"got {self.temperature}")


CHAT_GENERATION = GenerationSettings(max_new_tokens=128)  # a support bot's replies unless its card says otherwise
