"""A lexical part for single-label text classifiers: TF-IDF + logistic regression fitted on the training rows,
blended with the encoder's class probabilities by a weight chosen on validation:

    log p(label | text) = (1 - w) * log_softmax(encoder logits) + w * log p_lexical(label | text)

Short reviews often name the product in one or two characters ('蒙牛', '热水器') that a linear model over
character n-grams remembers and a small encoder can miss; the two make different errors. ``w`` = 0 keeps
the encoder alone, 1 the lexical model alone. Saved in the task directory as ``lexical.json`` (vectorizer
settings and vocabulary) and ``lexical.safetensors`` (idf, coefficients, intercepts): no pickle.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from .task import Task

LEXICAL_JSON = "lexical.json"
LEXICAL_WEIGHTS = "lexical.safetensors"
LEXICAL_FILES = (LEXICAL_JSON, LEXICAL_WEIGHTS)
WEIGHT_GRID = tuple(i / 20 for i in range(21))  # 0, 0.05, ..., 1
_ABSENT = -1e4  # intercept of a class the training rows lack: probability ~0


@dataclass
class Lexical:
    """A fitted TF-IDF vectorizer and one linear scorer per class (all the task's classes, in label order)."""

    vectorizer: TfidfVectorizer
    coef: np.ndarray  # [classes, vocabulary], float32
    intercept: np.ndarray  # [classes], float32
    weight: float = 0.0

    def log_probs(self, texts: Sequence[str]) -> torch.Tensor:
        """Log-probabilities [len(texts), classes] of the lexical model alone."""
        scores = self.vectorizer.transform(texts).astype(np.float32) @ self.coef.T + self.intercept
        return torch.log_softmax(torch.from_numpy(np.asarray(scores, dtype=np.float32)), dim=-1)

    def blend(self, logits: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """The blended log-probabilities of the encoder's ``logits`` for ``texts`` (row-aligned)."""
        return mix(logits, self.log_probs(texts), self.weight)

    def describe(self) -> dict[str, Any]:
        """What the card records: the weight and the features."""
        v = self.vectorizer
        return {"weight": self.weight, "analyzer": v.analyzer, "ngram_range": list(v.ngram_range),
                "vocabulary": len(v.vocabulary_)}


def mix(logits: torch.Tensor, lexical_log_probs: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - weight) * log_softmax(logits) + weight * lexical_log_probs."""
    return (1 - weight) * torch.log_softmax(logits.float(), dim=-1) + weight * lexical_log_probs


def row_text(fields: Sequence[str]) -> str:
    """One row's text fields as the lexical model reads them."""
    return "\n".join(fields)


def joined(texts: Sequence[Sequence[str]]) -> list[str]:
    """Per-field texts (as ``Rows.texts`` holds them) to one text per row."""
    return [row_text(fields) for fields in zip(*texts)]


def check_blendable(task: Task) -> None:
    """Refuse a task whose outputs are not one label of a fixed set (a lexical part is fitted per class)."""
    from .classification import TextClassification

    if not isinstance(task, TextClassification) or task.multi_label:
        raise ValueError(f"a lexical part needs a single-label classification task; '{task.name}' is not one")


def fit_lexical(texts: Sequence[str], targets: Sequence[int], num_classes: int, C: float = 10.0) -> Lexical:
    """TF-IDF (``baselines.tfidf_vectorizer``) + multinomial logistic regression on the training rows."""
    from sklearn.linear_model import LogisticRegression

    from .baselines import tfidf_vectorizer

    vectorizer = tfidf_vectorizer(texts)
    model = LogisticRegression(C=C, max_iter=2000).fit(vectorizer.fit_transform(texts), targets)
    coef = np.zeros((num_classes, model.coef_.shape[1]), dtype=np.float32)
    intercept = np.full(num_classes, _ABSENT, dtype=np.float32)
    if len(model.classes_) == 2:  # sklearn keeps one row for two classes: softmax([0, z]) = sigmoid(z)
        coef[model.classes_[1]], intercept[model.classes_] = model.coef_[0], [0.0, model.intercept_[0]]
    else:
        coef[model.classes_], intercept[model.classes_] = model.coef_, model.intercept_
    return Lexical(vectorizer, coef, intercept)


def choose_weight(logits: torch.Tensor, lexical_log_probs: torch.Tensor, targets: torch.Tensor,
                  grid: Sequence[float] = WEIGHT_GRID) -> float:
    """The blend weight of ``grid`` with the highest validation accuracy; the smallest such weight on ties."""
    accuracy = [(mix(logits, lexical_log_probs, w).argmax(-1) == targets).float().mean().item() for w in grid]
    return grid[accuracy.index(max(accuracy))]


def save_lexical(lexical: Lexical, directory: Path) -> None:
    """Write the lexical part into a task directory being written (``artifact.save_artifact``)."""
    from safetensors.torch import save_file

    v = lexical.vectorizer
    vocabulary = sorted(v.vocabulary_, key=v.vocabulary_.__getitem__)
    settings = {"analyzer": v.analyzer, "ngram_range": list(v.ngram_range), "sublinear_tf": v.sublinear_tf,
                "lowercase": v.lowercase, "weight": lexical.weight, "vocabulary": vocabulary}
    (directory / LEXICAL_JSON).write_text(json.dumps(settings, ensure_ascii=False), encoding="utf-8")
    save_file({"idf": torch.from_numpy(np.asarray(v.idf_, dtype=np.float64)), "coef": torch.from_numpy(lexical.coef),
               "intercept": torch.from_numpy(lexical.intercept)}, str(directory / LEXICAL_WEIGHTS))


def load_lexical(directory: str | Path) -> Lexical:
    """The lexical part saved in a task directory."""
    from safetensors.torch import load_file
    from sklearn.feature_extraction.text import TfidfVectorizer

    directory = Path(directory)
    settings = json.loads((directory / LEXICAL_JSON).read_text(encoding="utf-8"))
    tensors = load_file(str(directory / LEXICAL_WEIGHTS))
    vocabulary = {term: i for i, term in enumerate(settings["vocabulary"])}
    vectorizer = TfidfVectorizer(analyzer=settings["analyzer"], ngram_range=tuple(settings["ngram_range"]),
                                 sublinear_tf=settings["sublinear_tf"], lowercase=settings["lowercase"],
                                 vocabulary=vocabulary)
    vectorizer.idf_ = tensors["idf"].numpy()
    return Lexical(vectorizer, tensors["coef"].numpy(), tensors["intercept"].numpy(), float(settings["weight"]))
