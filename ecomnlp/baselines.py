"""Classical baselines measured beside our models: TF-IDF + logistic regression, TF-IDF + k-means."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def looks_cjk(texts: Sequence[str], sample: int = 200) -> bool:
    """True when most texts contain Chinese/Japanese/Korean characters (then char n-grams fit)."""
    head = list(texts[:sample])
    return sum(bool(CJK.search(t)) for t in head) > len(head) / 2


def tfidf_vectorizer(texts: Sequence[str]) -> TfidfVectorizer:
    """Sublinear TF-IDF of terms in at least two texts: char 1-3-grams for CJK text, else word 1-2-grams."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    analyzer, ngrams = ("char", (1, 3)) if looks_cjk(texts) else ("word", (1, 2))
    return TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True, min_df=2)


def tfidf_logits(train_texts: Sequence[str], train_targets: Sequence[int], test_texts: Sequence[str],
                 num_classes: int) -> torch.Tensor:
    """Log-probabilities [n_test, num_classes] of TF-IDF + LR: char 1-3-grams for CJK text, else word 1-2-grams."""
    from .lexical import fit_lexical

    return fit_lexical(train_texts, train_targets, num_classes).log_probs(test_texts)


def tfidf_kmeans(texts: Sequence[str], k: int, seed: int = 0) -> np.ndarray:
    """The cluster of each text: k-means (10 seeded k-means++ starts) on its L2-normalised TF-IDF vector."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(tfidf_vectorizer(texts).fit_transform(texts))


def describe(train_texts: Sequence[str], name: str = "TF-IDF + logistic regression") -> dict[str, Any]:
    analyzer = "char 1-3-grams" if looks_cjk(train_texts) else "word 1-2-grams"
    return {"name": name, "features": analyzer, "train_examples": len(train_texts)}
