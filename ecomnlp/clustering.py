"""Group texts (e.g. product titles) by meaning: encoder vectors, k-means, and a report per cluster.

Texts are embedded by the shared encoder, alone or through a trained task's adapter (mean pooling,
L2-normalised), and clustered with k-means; ``k="auto"`` keeps the k with the best silhouette.
Each cluster is described by its size, its most typical items (nearest to the centroid) and its
top terms: TF-IDF of its texts against the rest, char bigrams for Chinese, words for English.
"""
from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from .artifact import write_json_atomic, write_text_atomic
from .baselines import CJK

if TYPE_CHECKING:
    from sklearn.cluster import KMeans

    from .backbone import Backbone

log = logging.getLogger(__name__)


@dataclass
class Clustering:
    """``labels[i]`` is the cluster of ``texts[i]``; ``clusters[c]`` describes cluster ``c``."""

    texts: list[str]
    vectors: np.ndarray  # the L2-normalised embeddings, one row per text
    labels: list[int]
    k: int
    silhouette: float
    silhouette_by_k: dict[int, float]  # every k tried
    clusters: list[dict[str, Any]]  # {"cluster", "size", "typical": [{"index", "text"}], "terms"}
    encoder: dict[str, str | None]  # {"model": task directory or None, "base": base model folder}

    def save(self, out: str | Path, rows: Sequence[int] | None = None) -> Path:
        """Write clusters.csv, clusters.json and map.png into ``out``, each atomically.

        ``rows`` numbers the texts in both files; by default 1..n, like data rows of an input file.
        """
        out = Path(out)
        rows = list(rows) if rows is not None else list(range(1, len(self.texts) + 1))
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["row", "text", "cluster"])
        writer.writerows(zip(rows, self.texts, self.labels))
        write_text_atomic(out / "clusters.csv", table.getvalue())
        clusters = [{**c, "typical": [{"row": rows[t["index"]], "text": t["text"]} for t in c["typical"]]}
                    for c in self.clusters]
        write_json_atomic(out / "clusters.json", {
            "texts": len(self.texts), "encoder": self.encoder, "k": self.k, "silhouette": self.silhouette,
            "silhouette_by_k": self.silhouette_by_k, "clusters": clusters,
        })
        plot_map(self, out / "map.png")
        return out


def cluster(
    texts: Sequence[str],
    k: int | Literal["auto"] = "auto",
    model: str | Path | None = None,
    base: str | None = None,
    max_k: int = 20,
    typical: int = 5,
    terms: int = 8,
    max_length: int = 128,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
) -> Clustering:
    """Cluster ``texts`` by meaning; ``.save(out)`` writes the report files.

    Args:
        texts: the texts, e.g. product titles.
        k: the number of clusters, or "auto": the best silhouette over 2..min(max_k, n - 1).
        model: a trained task directory: embed through its adapter. Default: the base model alone.
        base: base model name or folder. Default: the task's own base, or minilm-l6 without ``model``.
        max_k: the largest k that "auto" tries.
        typical: how many items nearest to each centroid to list.
        terms: how many top terms to list per cluster.
        max_length: longer texts are truncated to this many tokens.
        batch_size: texts per forward pass.
        seed: k-means seed.
        device: where the encoder runs.
    """
    import torch

    from .data import tokenize
    from .predictor import embed

    texts = list(texts)
    candidates = _candidates(k, len(texts), len(set(texts)), max_k)
    backbone, adapter = _encoder(model, base, device)
    ids = tokenize(backbone.tokenizer, [texts], min(max_length, backbone.max_positions))
    vectors = torch.nn.functional.normalize(embed(backbone, adapter, ids, batch_size), dim=-1).numpy()
    kmeans, scores = _best_kmeans(vectors, candidates, seed)
    labels = kmeans.labels_
    distances = np.linalg.norm(vectors - kmeans.cluster_centers_[labels], axis=1)
    clusters = []
    for c, words in enumerate(top_terms(texts, labels, kmeans.n_clusters, terms)):
        members = np.flatnonzero(labels == c)
        nearest = members[np.argsort(distances[members], kind="stable")][:typical]
        clusters.append({"cluster": c, "size": len(members), "terms": words,
                         "typical": [{"index": int(i), "text": texts[i]} for i in nearest]})
    return Clustering(
        texts=texts, vectors=vectors, labels=labels.tolist(), k=kmeans.n_clusters, silhouette=scores[kmeans.n_clusters],
        silhouette_by_k=scores, clusters=clusters,
        encoder={"model": None if model is None else str(model), "base": str(backbone.base_dir)},
    )


def _candidates(k: int | Literal["auto"], n: int, distinct: int, max_k: int) -> list[int]:
    """The k values to try: k-means needs k distinct texts, and the silhouette needs k < n."""
    upper = min(distinct, n - 1)
    if upper < 2:
        raise ValueError(f"clustering needs at least 3 texts, 2 of them different; got {n} ({distinct} distinct)")
    if k == "auto":
        return list(range(2, max(2, min(max_k, upper)) + 1))
    if not 2 <= k <= upper:
        raise ValueError(f"k={k} is out of range: for {n} texts ({distinct} distinct) k must be between 2 and {upper}")
    return [k]


def _encoder(model: str | Path | None, base: str | None, device: str) -> tuple[Backbone, str | None]:
    """The backbone and the adapter to embed with: a trained task's, or none (the base alone)."""
    from .backbone import Backbone
    from .models import resolve
    from .predictor import load

    if model is not None:
        trained = load(model, base, device)
        return trained.backbone, trained.adapter
    return Backbone(resolve(base or "minilm-l6")).to(device), None


def _best_kmeans(vectors: np.ndarray, candidates: list[int], seed: int) -> tuple[KMeans, dict[int, float]]:
    """The k-means fit with the best silhouette among ``candidates``, and every candidate's silhouette."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    fits = {k: KMeans(n_clusters=k, n_init=10, random_state=seed).fit(vectors) for k in candidates}
    scores = {k: float(silhouette_score(vectors, fit.labels_, sample_size=min(len(vectors), 5000), random_state=seed))
              for k, fit in fits.items()}
    return fits[max(scores, key=scores.__getitem__)], scores


_CJK_RUN = re.compile(f"({CJK.pattern}+)")


def terms_of(text: str) -> list[str]:
    """A text's terms for TF-IDF: char bigrams of each Chinese/Japanese/Korean run (a lone character
    stands for itself), and its other words of two or more letters or digits, less English stop words."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    terms = []
    for i, piece in enumerate(_CJK_RUN.split(text.lower())):
        if i % 2:  # split() puts the captured CJK runs at odd positions
            terms += [piece[j : j + 2] for j in range(len(piece) - 1)] or [piece]
        else:
            terms += [w for w in re.findall(r"[^\W_]{2,}", piece) if w not in ENGLISH_STOP_WORDS]
    return terms


def top_terms(texts: Sequence[str], labels: np.ndarray, k: int, n: int) -> list[list[str]]:
    """Per cluster, the ``n`` terms whose mean TF-IDF weight in the cluster most exceeds that in the other texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(analyzer=terms_of, sublinear_tf=True)
    try:
        weights = vectorizer.fit_transform(texts)
    except ValueError:  # not a single term in any text (e.g. only symbols)
        return [[] for _ in range(k)]
    vocabulary = vectorizer.get_feature_names_out()
    result = []
    for c in range(k):
        lift = np.asarray(weights[labels == c].mean(0) - weights[labels != c].mean(0)).ravel()
        result.append([vocabulary[i] for i in np.argsort(-lift, kind="stable")[:n] if lift[i] > 0])
    return result


def plot_map(result: Clustering, path: Path) -> Path:
    """2-D PCA of the vectors, one colour per cluster, written atomically. The legend lists each
    cluster's top terms when a local font can draw them (else see clusters.json)."""
    from sklearn.decomposition import PCA

    from .evaluation import font_for, pyplot, save_figure

    plt = pyplot()
    points = PCA(n_components=2, random_state=0).fit_transform(result.vectors)
    labels = np.asarray(result.labels)
    font = font_for([t for c in result.clusters for t in c["terms"][:3]])
    colours = plt.get_cmap("tab10" if result.k <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    for c in result.clusters:
        mine = points[labels == c["cluster"]]
        name = f"{c['cluster']} ({c['size']})" + (f": {', '.join(c['terms'][:3])}" if font and c["terms"] else "")
        ax.scatter(mine[:, 0], mine[:, 1], s=14, alpha=0.8, color=colours(c["cluster"] % colours.N), label=name)
        ax.annotate(str(c["cluster"]), mine.mean(0), fontsize=10, fontweight="bold", ha="center", va="center")
    ax.legend(prop={"family": font or "DejaVu Sans", "size": 8}, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"{len(result.texts)} texts, k={result.k}, silhouette {result.silhouette:.2f}"
                 + ("" if font else " (terms in clusters.json)"))
    fig.tight_layout()
    return save_figure(fig, path)


def read_texts(path: str | Path, column: str) -> tuple[list[str], list[int]]:
    """The non-blank texts of ``column`` in a data file, and their row numbers (from 1, header excluded)."""
    from .data import DataError, read_table

    table = read_table(path)
    if column not in table.column_names:
        raise DataError(f"{path}: no column '{column}' to cluster; the file has columns {table.column_names}")
    kept = [(row, str(v)) for row, v in enumerate(table[column][:], start=1) if v is not None and str(v).strip()]
    if not kept:
        raise DataError(f"{path}: column '{column}' has no text")
    if len(kept) < len(table):
        log.warning("%s: skipped %d row(s) with empty '%s'", path, len(table) - len(kept), column)
    return [text for _, text in kept], [row for row, _ in kept]
