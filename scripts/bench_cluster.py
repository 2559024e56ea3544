"""Clustering benchmark: cluster the online_shopping_10_cats test reviews into as many clusters as
there are product categories (10), with the encoder (`ecomnlp.cluster`) and with TF-IDF + k-means
in the same run, and score both against the true categories: adjusted Rand index and purity.
Writes reports/bench_cluster.json and the README table (between the bench_cluster markers).

    python scripts/bench_cluster.py [--rows N] [--model runs/x] [--data FILE]

Without --model the base encoder alone embeds the reviews (e5-small-multilingual); with --model,
a trained task's adapter on its own base. Relative paths are taken from the repository root.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from _bench import ROOT, write_readme_section

DATA = "../shared/data/online_shopping_10_cats/test.csv"


def read_reviews(path: str, rows: int | None, seed: int) -> tuple[list[str], list[str], int]:
    """The (review, cat) pairs with both present, a seeded random ``rows`` of them if given, and the file's row count."""
    from ecomnlp.data import read_table

    table = read_table(path)
    pairs = [(str(r), str(c)) for r, c in zip(table["review"][:], table["cat"][:]) if r and r.strip() and c]
    if rows and rows < len(pairs):
        pairs = [pairs[i] for i in sorted(random.Random(seed).sample(range(len(pairs)), rows))]
    return [r for r, _ in pairs], [c for _, c in pairs], len(table)


def scores(truth: Sequence[str], labels: Sequence[int]) -> dict[str, float]:
    """Adjusted Rand index, and purity: the share of texts in their cluster's most common category."""
    from sklearn.metrics import adjusted_rand_score
    from sklearn.metrics.cluster import contingency_matrix

    purity = contingency_matrix(truth, labels).max(axis=0).sum() / len(truth)
    return {"adjusted_rand_index": float(adjusted_rand_score(truth, labels)), "purity": float(purity)}


def timed(run: Callable[[], Sequence[int]], truth: Sequence[str]) -> dict[str, Any]:
    started = time.perf_counter()
    labels = run()
    return {**scores(truth, labels), "wall_time_s": round(time.perf_counter() - started, 1)}


def table(report: dict[str, Any]) -> str:
    lines = [f"| method ({report['rows']} test reviews, {report['categories']} categories, k={report['k']}) "
             "| adjusted Rand index | purity | wall time |", "|---|---|---|---|"]
    for name, r in (("ours: " + report["ours"]["encoder"] + " + k-means", report["ours"]),
                    ("TF-IDF (" + report["tfidf"]["features"] + ") + k-means", report["tfidf"])):
        lines.append(f"| {name} | {r['adjusted_rand_index']:.3f} | {r['purity']:.1%} | {r['wall_time_s']:.1f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA, help="CSV with columns review and cat")
    parser.add_argument("--rows", type=int, default=None, help="cluster a seeded random subset of this many rows")
    parser.add_argument("--model", default=None, help="trained task directory: embed through its adapter")
    parser.add_argument("--base", default=None, help="base model without --model (default e5-small-multilingual)")
    parser.add_argument("--k", type=int, default=None, help="number of clusters (default: the number of categories)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset and of k-means")
    parser.add_argument("--report", default="reports/bench_cluster.json", help="JSON report to write")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    opts = parser.parse_args()
    os.chdir(ROOT)
    import ecomnlp
    from ecomnlp.baselines import describe, tfidf_kmeans

    texts, truth, file_rows = read_reviews(opts.data, opts.rows, opts.seed)
    k = opts.k or len(set(truth))
    base = opts.base or (None if opts.model else "e5-small-multilingual")
    ours = timed(lambda: ecomnlp.cluster(texts, k, opts.model, base, seed=opts.seed).labels, truth)
    tfidf = timed(lambda: tfidf_kmeans(texts, k, opts.seed), truth)
    report = {
        "data": opts.data, "file_rows": file_rows, "rows": len(texts), "categories": len(set(truth)), "k": k,
        "seed": opts.seed, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "ours": {"encoder": f"{opts.model} (adapter)" if opts.model else base, **ours},
        "tfidf": {**describe(texts, "TF-IDF + k-means"), **tfidf},
    }
    path = Path(opts.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    text = table(report)
    print(json.dumps(report, indent=2, ensure_ascii=False), text, sep="\n")
    if not opts.no_readme:
        write_readme_section("bench_cluster", text)


if __name__ == "__main__":
    sys.exit(main())
