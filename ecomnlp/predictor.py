"""Trained tasks in memory: ``load`` one, or ``load_many`` on one shared base."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from .artifact import CHAT_KIND, FRAUD_KIND, HEAD, RECO_KIND, SEARCH_KIND, check_base, member_dirs, read_card
from .backbone import Backbone, Pooling
from .data import LengthGroupedBatches, collate, tokenize
from .lexical import Lexical, joined, load_lexical
from .models import resolve
from .task import Task, build_task

if TYPE_CHECKING:
    from .chatbot import SupportBot
    from .tasks.fraud_detection import FraudModel
    from .tasks.recommendation import RecommendationModel
    from .tasks.search_ranking import SearchModel

Inputs = str | Sequence[str] | Sequence[Mapping[str, Any]]


def as_texts(inputs: Inputs, fields: Sequence[str]) -> list[list[str]]:
    """Strings (one text field) or dicts keyed by the task's text fields -> texts per field."""
    if isinstance(inputs, str):
        inputs = [inputs]
    rows = list(inputs)
    if rows and isinstance(rows[0], Mapping):
        for i, row in enumerate(rows, 1):
            if not isinstance(row, Mapping):
                raise TypeError(f"input {i} is a {type(row).__name__}, not a dict as the first: pass all texts or all "
                                f"dicts")
            missing = [f for f in fields if f not in row]
            if missing:
                raise KeyError(f"input {i} lacks field(s) {missing}; this task reads {list(fields)}")
            for f in fields:
                if not isinstance(row[f], str):
                    raise TypeError(f"input {i}, field '{f}': {row[f]!r} is not a text")
        return [[r[f] for r in rows] for f in fields]
    if len(fields) != 1:
        raise TypeError(f"this task reads {list(fields)}: pass dicts with those keys")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, str):
            raise TypeError(f"input {i} is a {type(row).__name__}: pass texts (str), or dicts with the task's "
                            f"field(s) {list(fields)}")
    return [rows]


@torch.inference_mode()
def embed(
    backbone: Backbone, adapter: str | None, ids: Sequence[Sequence[int]], batch_size: int, pooling: Pooling = "mean",
) -> torch.Tensor:
    """Pooled vectors (on the CPU) for token-id rows, in input order; batches are grouped by length.

    ``adapter`` is the adapter to run through, or None for the base model alone.
    """
    if adapter is not None and backbone.active != adapter:  # switching costs a pass over the modules
        backbone.use(adapter)
    base_only = backbone.encoder.disable_adapter() if adapter is None and backbone.adapters else nullcontext()
    was_training = backbone.training
    if was_training:  # the modules follow the backbone's mode (Backbone keeps new adapters in it)
        backbone.eval()
    device = next(backbone.parameters()).device
    vectors = torch.empty(len(ids), backbone.hidden_size)
    pad = backbone.tokenizer.pad_token_id
    with base_only:
        for batch in LengthGroupedBatches([len(x) for x in ids], batch_size, shuffle=False):
            tensors = {k: v.to(device) for k, v in collate([ids[i] for i in batch], pad).items()}
            vectors[batch] = backbone(**tensors, pooling=pooling).float().cpu()
    if was_training:
        backbone.train()
    return vectors


@torch.inference_mode()
def predict_logits(
    backbone: Backbone, adapter: str, head: nn.Module, ids: Sequence[Sequence[int]], batch_size: int,
    pooling: Pooling = "mean",
) -> torch.Tensor:
    """Logits for token-id rows, in input order; batches are grouped by length."""
    vectors = embed(backbone, adapter, ids, batch_size, pooling)
    was_training = head.training
    head.eval()
    logits = head(vectors.to(next(head.parameters()).device)).float().cpu()
    head.train(was_training)
    return logits


def average_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """An ensemble's logits: its members' averaged (for a softmax classifier the same prediction as averaging
    their log-probabilities, which differ from the logits by one constant per row)."""
    return logits[0] if len(logits) == 1 else torch.stack(list(logits)).mean(0)


class TaskModel:
    """One trained task: ``predict`` texts (or dicts of text fields) to decoded outputs."""

    def __init__(self, backbone: Backbone, adapter: str, task: Task, head: nn.Module, card: dict[str, Any],
                 lexical: Lexical | None = None, members: Sequence[tuple[str, nn.Module]] = ()) -> None:
        self.backbone, self.adapter, self.task, self.head, self.card = backbone, adapter, task, head, card
        self.lexical = lexical  # a classifier's lexical part, blended into its logits (ecomnlp.lexical)
        self.members = list(members)  # an ensemble's other (adapter, head) pairs (ecomnlp.ensemble)

    @property
    def max_length(self) -> int:
        return int(self.card["max_length"])

    def logits(self, inputs: Inputs, batch_size: int = 64) -> torch.Tensor:
        return self.field_logits(as_texts(inputs, self.task.schema.text), batch_size)

    def field_logits(self, texts: list[list[str]], batch_size: int = 64) -> torch.Tensor:
        """Logits for texts already split per text field (as ``Rows.texts`` holds them)."""
        if not texts[0]:  # no rows: the tokenizer would fail; the head still gives the output width
            with torch.inference_mode():
                device = next(self.head.parameters()).device
                return self.head(torch.zeros(0, self.backbone.hidden_size, device=device)).float().cpu()
        logits = self.id_logits(tokenize(self.backbone.tokenizer, texts, self.max_length), batch_size)
        return self.lexical.blend(logits, joined(texts)) if self.lexical is not None else logits

    def id_logits(self, ids: Sequence[Sequence[int]], batch_size: int = 64) -> torch.Tensor:
        """The encoder's logits for token-id rows; an ensemble's are its members' logits averaged."""
        return average_logits([predict_logits(self.backbone, adapter, head, ids, batch_size, self.card["pooling"])
                               for adapter, head in [(self.adapter, self.head), *self.members]])

    def predict(self, inputs: Inputs, batch_size: int = 64) -> list[dict[str, Any]]:
        return self.task.decode(self.logits(inputs, batch_size))

    def explain(self, inputs: Inputs, top_k: int | None = 5, batch_size: int = 64) -> list[dict[str, Any]]:
        """The words that raised each predicted label's probability most, by occlusion (``ecomnlp.explain``)."""
        from .explain import explain

        return explain(self, inputs, top_k, batch_size)

    def __repr__(self) -> str:
        return f"TaskModel({self.card['task']!r}, adapter={self.adapter!r}, base={self.card['base_model']['name']!r})"


class TaskModels(Mapping[str, TaskModel]):
    """Several tasks hosted on one base model in memory, routed by name."""

    def __init__(self, backbone: Backbone, models: dict[str, TaskModel]) -> None:
        self.backbone, self._models = backbone, models

    def __getitem__(self, name: str) -> TaskModel:
        if name not in self._models:
            raise KeyError(f"no task '{name}'; loaded: {sorted(self._models)}")
        return self._models[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def predict(self, task: str, inputs: Inputs, batch_size: int = 64) -> list[dict[str, Any]]:
        return self[task].predict(inputs, batch_size)


def _load_head(task: Task, backbone: Backbone, folder: Path) -> nn.Module:
    from safetensors.torch import load_file

    head = task.build_head(backbone.hidden_size)
    head.load_state_dict(load_file(str(folder / HEAD)))
    return head.to(next(backbone.parameters()).device).eval()


def attach(backbone: Backbone, path: str | Path, name: str, trainable: bool = False) -> TaskModel:
    """Load the task directory ``path`` as adapter ``name`` on an existing backbone (an ensemble's other
    members as ``name-member1``, ...)."""
    path = Path(path)
    card = read_card(path)
    check_base(card, path, backbone.base_dir)
    if trainable and card.get("ensemble"):
        raise ValueError(f"{path} is an ensemble of {len(member_dirs(card)) + 1} adapters: fine-tune each member's "
                         f"own task directory (its card lists them), then build a new ensemble")
    task = build_task(card["task"], card["task_state"])
    head = _load_head(task, backbone, path)
    members = []
    for i, folder in enumerate(member_dirs(card), 1):
        backbone.load_adapter(f"{name}-member{i}", path / folder)
        members.append((f"{name}-member{i}", _load_head(task, backbone, path / folder)))
    backbone.load_adapter(name, path, trainable=trainable)  # last: the active adapter
    return TaskModel(backbone, name, task, head, card, load_lexical(path) if card.get("lexical") else None, members)


def backbone_for(path: str | Path, base: str | None, device: str, dropout: float | None = None) -> Backbone:
    """The base a task was trained on: ``base`` if given, else its recorded folder, else its name;
    ``dropout``: the base's own dropout while training (``Backbone``)."""
    if base is None:
        recorded = read_card(path)["base_model"]
        base = recorded["path"] if Path(recorded["path"]).is_dir() else recorded["name"]
    return Backbone(resolve(base), dropout=dropout).to(device).eval()


def load(path: str | Path, base: str | None = None, device: str = "cpu"
         ) -> TaskModel | SupportBot | FraudModel | RecommendationModel | SearchModel:
    """A trained task directory, ready to ``predict``; a chat directory (``train_chat``) gives a
    ``SupportBot``, a fraud directory (``train_fraud``) a ``FraudModel``, a recommendation directory
    (``train_recommendation``) a ``RecommendationModel``, a search-ranking one (``train_search``) a
    ``SearchModel``. ``base`` overrides where an encoder task's base model is found."""
    card = read_card(path)
    if card.get("kind") == CHAT_KIND:
        from .chatbot import load_chatbot

        return load_chatbot(path, device=device)
    if card.get("kind") == FRAUD_KIND:
        from .tasks.fraud_detection import load_fraud

        return load_fraud(path, base, device)
    if card.get("kind") == RECO_KIND:
        from .tasks.recommendation import load_recommendation

        return load_recommendation(path, base, device)
    if card.get("kind") == SEARCH_KIND:
        from .tasks.search_ranking import load_search

        return load_search(path, base, device)
    return attach(backbone_for(path, base, device), path, card["task"])


def load_many(paths: Sequence[str | Path] | Mapping[str, str | Path], base: str | None = None, device: str = "cpu") -> TaskModels:
    """Several task directories on one shared base; keys are task names unless given as a mapping."""
    if not isinstance(paths, Mapping):
        named = {read_card(p)["task"]: p for p in paths}
        if len(named) != len(paths):
            raise ValueError("two directories hold the same task: pass a mapping {name: path} instead")
        paths = named
    if not paths:
        raise ValueError("load_many needs at least one task directory")
    backbone = backbone_for(next(iter(paths.values())), base, device)
    return TaskModels(backbone, {name: attach(backbone, p, name) for name, p in paths.items()})
