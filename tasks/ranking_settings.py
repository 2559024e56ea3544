"""Settings of the recommendation and search-ranking tasks (``tasks/recommendation.py``,
``tasks/search_ranking.py``), as YAML configs and ``ecomnlp train-reco`` / ``ecomnlp train-search`` mirror them.
Plain dataclasses with no heavy imports: jsonargparse imports a signature's annotations, including those a module
imports only under TYPE_CHECKING, so the CLI's types must live where importing them stays cheap."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ecomnlp.config import TrainerSettings

RECOMMENDATION = "recommendation"
SEARCH_RANKING = "search_ranking"
Split = Literal["stratified", "temporal", "random"]


@dataclass
class RecoData:
    """Interactions and the optional user and item files.

    ``interactions``: CSV / TSV / JSONL / Parquet, a RecBole ``.inter`` file, or MovieLens ``u.data`` /
    ``ratings.dat`` / ``ratings.csv``; ``users`` / ``items``: the side tables (``.user`` / ``.item``, ``u.user`` /
    ``u.item``, ``users.dat`` / ``movies.dat``, ``movies.csv``, or any table); without them, the interactions file's
    other columns describe its users and items. ``columns``: {user, item, rating, time} -> column names (the usual
    names are found without it). ``min_rating``: ratings below are not interactions (null: every row counts).

    Splits, per user: ``test`` (a file) or ``test_fraction`` of each user's interactions (0: no test), then
    ``valid_fraction`` of the rest for validation (0: none; training runs ``max_epochs`` and keeps the last
    weights). ``split``: ``stratified`` (Microsoft Recommenders' seeded per-user shuffle), ``temporal`` (each
    user's latest) or ``random``. ``cold_items``: a share of the items kept out of training entirely; they stay in
    the catalogue with their features and text, and the test holds every interaction with them (item cold start).
    """

    interactions: str
    users: str | None = None
    items: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    min_rating: float | None = None
    test: str | None = None
    split: Split = "stratified"
    test_fraction: float = 0.25
    valid_fraction: float = 0.1
    cold_items: float = 0.0
    split_seed: int = 42
    max_length: int | None = None
    batch_size: int = 512
    eval_batch_size: int = 256


@dataclass
class RecoNetwork:
    """The towers, the scorer and the loss.

    Item tower: an id embedding (``item_ids``) plus the item's features and text (``features.items``), projected to
    ``dim``; ``id_dropout`` hides that share of item ids in training so that features and text alone learn to
    place items without history. User tower: the user's last ``history`` items (null: all), each an id embedding
    (``history_ids``) plus, with ``history_features``, its features and text, summed with weights 1/sqrt(n); plus
    the user's own features and, with ``user_ids``, a user id embedding. In training, the pair's own item is left
    out of the history and each other item is kept with probability ``history_keep``.

    ``scorer``: ``dot`` (two-tower: cached item vectors, whole-catalogue top-k); ``mlp`` (an MLP over
    [x_u; x_i; x_u ⊙ x_i], ``hidden``) or ``linear`` (σ(W[x_u; x_i] + b), which cannot personalise a ranking)
    re-rank the dot product's top ``rerank`` candidates (null: the whole catalogue). ``loss``: ``bce`` (pointwise,
    observed pairs against ``negatives`` sampled unseen items), ``bpr`` (pairwise) or ``softmax``; ``negatives:
    all`` is a softmax over the whole catalogue. The cross scorer trains with BCE (or BPR) on ``cross_negatives``
    sampled items. ``text``: item texts through the task's LoRA adapter (``adapter``: trains with the towers; slow
    on CPU) or through the frozen base once, cached (``frozen``), with a trainable projection.
    """

    dim: int = 128
    scorer: Literal["dot", "mlp", "linear"] = "dot"
    hidden: list[int] = field(default_factory=lambda: [128])
    rerank: int | None = 100
    loss: Literal["bce", "bpr", "softmax"] = "softmax"
    negatives: int | Literal["all"] = "all"
    cross_negatives: int = 8
    item_ids: bool = True
    id_dropout: float = 0.0
    history: int | None = 200
    history_keep: float = 0.75
    history_ids: bool = True
    history_features: bool = True
    user_ids: bool = False
    text: Literal["frozen", "adapter"] = "frozen"
    text_dim: int = 64
    embedding_dim: int = 16
    dropout: float = 0.0


@dataclass
class SearchData:
    """Relevance judgments and the product catalogue.

    ``judgments``: rows (query text, item id[, label]); ``items``: the catalogue (item id and attributes; the
    features' templates render them as text). ``columns``: {query, item, label} -> column names (item: also the id
    column of the catalogue). Without a label every row is relevant (e.g. clicks); with one, a row is relevant when
    its gain (``gains`` maps text labels such as ESCI's E/S/C/I to numbers) is at least ``min_gain``; nDCG uses the
    gains, and judged irrelevant items fill up to half of each relevant pair's negatives. ``valid`` / ``test``: files,
    or ``valid_fraction`` / ``test_fraction`` of the queries (a query's judgments stay together), seeded.
    """

    judgments: str
    items: str
    columns: dict[str, str] = field(default_factory=dict)
    gains: dict[str, float] | None = None
    min_gain: float = 1.0
    valid: str | None = None
    test: str | None = None
    valid_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 42
    max_length: int | None = None
    query_max_length: int = 32
    batch_size: int = 128
    eval_batch_size: int = 256


@dataclass
class SearchNetwork:
    """Query tower: the query's text vector (the shared encoder, with the task's adapter or frozen) through an MLP
    (``query_hidden``) to ``dim``. Item tower, scorer, loss and negatives as for recommendation: ``loss: bce`` is
    pointwise (a relevant product 1, its negatives 0), ``bpr`` pairwise (relevant above each negative); the negatives
    of a relevant (query, product) pair are the query's judged irrelevant products (up to half) and sampled unjudged
    ones. Product ids (``item_ids``) are off by default: a query's products are found by their text and features.
    """

    dim: int = 128
    query_hidden: list[int] = field(default_factory=list)
    scorer: Literal["dot", "mlp", "linear"] = "dot"
    hidden: list[int] = field(default_factory=lambda: [128])
    rerank: int | None = 100
    loss: Literal["bce", "bpr", "softmax"] = "bce"
    negatives: int | Literal["all"] = 8
    cross_negatives: int = 8
    item_ids: bool = False
    id_dropout: float = 0.0
    text: Literal["frozen", "adapter"] = "adapter"
    text_dim: int = 64
    embedding_dim: int = 16
    dropout: float = 0.0


RECO_TRAINER = TrainerSettings(max_epochs=8, lr=3e-3, weight_decay=0.0, warmup_ratio=0.0, patience=3,
                               log_every_n_steps=50)
SEARCH_TRAINER = TrainerSettings(max_epochs=10, lr=2e-3, weight_decay=0.0, patience=3, log_every_n_steps=20)
