"""Per-domain benchmark: does a review-sentiment task trained without hotel reviews adapt to hotels
with 500 labelled ones? One run, on online_shopping_10_cats:

  (a) review sentiment trained on the other categories (hotels, 酒店, left out), not fine-tuned;
  (b) (a) fine-tuned on 500 labelled hotel reviews from the train file (`ecomnlp.training.finetune`);
  (c) a task trained from scratch on the same 500 hotel reviews;
  and TF-IDF + logistic regression fitted on the same 500 hotel reviews.

All are tested on the hotel reviews of the test file; (a) and (b) also on the test file's other
categories, to show what fine-tuning made the task forget. The filtered files are written under
--work (default runs/bench-domain/data). Settings come from configs/review_sentiment.yaml, except that (a)
trains one epoch and no task here has a lexical part (this measures the adapter; bench_quality.py measures
the blend); (b) and (c) share their trainer settings and rows. Writes reports/bench_domain.json and the README table
(between the bench_domain markers).

    python scripts/bench_domain.py [--train-examples 20000] [--examples 500] [--model NAME]

Smoke run: --model <tiny model dir> --data-dir <tiny copy> --train-examples 40 --examples 20 --max-steps 2.
Relative paths are taken from the repository root.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _bench import ROOT, tfidf_accuracy, write_readme_section

CONFIG = "configs/review_sentiment.yaml"
DOMAIN = "酒店"
# file written under <work>/data -> (split it comes from, whether it holds the new domain's rows)
PARTS = {"old_train": ("train", False), "old_valid": ("valid", False), "old_test": ("test", False),
         "new_train": ("train", True), "new_test": ("test", True)}


def split_domain(data_dir: Path, out: Path, domain: str) -> dict[str, dict[str, Any]]:
    """Write each part of ``PARTS`` (rows with or without ``cat == domain``) as a CSV under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split in {s for s, _ in PARTS.values()}:
        with (data_dir / f"{split}.csv").open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            splits[split] = (reader.fieldnames, list(reader))
    parts = {}
    for name, (split, new) in PARTS.items():
        header, rows = splits[split]
        kept = [r for r in rows if (r["cat"] == domain) == new]
        path = out / f"{name}.csv"
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, header)
            writer.writeheader()
            writer.writerows(kept)
        parts[name] = {"path": str(path), "rows": len(kept)}
    return parts


def table(r: dict[str, Any]) -> str:
    source, tuned, scratch, tfidf, acc = r["source"], r["finetuned"], r["scratch"], r["tfidf"], r["accuracy"]
    new_rows = tuned["metrics"]["after"]["new_domain"]["examples"]
    old_rows = tuned["metrics"]["after"]["old_domain"]["examples"]
    old_reviews = f"of {source['train_rows_available']} non-hotel reviews"

    def gain(run: str, domain: str) -> str:
        change = acc[run][domain] - acc["no_finetune"][domain]
        return f"{acc[run][domain]:.2%} ({100 * change:+.1f} pts)"

    def rows(s: dict[str, Any], what: str) -> str:
        return f"{s['train_examples']} {what} (+{s['valid_examples']} validation)"

    lines = [
        f"| {r['model']}, sentiment | hotel test ({new_rows} reviews) | other categories' test ({old_rows}) "
        "| trained on | steps | wall time |",
        "|---|---|---|---|---|---|",
        f"| (a) trained without hotels, not fine-tuned | {acc['no_finetune']['new_domain']:.2%} | "
        f"{acc['no_finetune']['old_domain']:.2%} | {rows(source, old_reviews)} | {source['steps']} | "
        f"{source['wall_time_s'] / 60:.1f} min |",
        f"| (b) (a) fine-tuned on {r['examples']} hotel reviews | {gain('finetuned', 'new_domain')} | "
        f"{gain('finetuned', 'old_domain')} | {rows(tuned, 'hotel reviews')} | {tuned['steps']} | "
        f"{tuned['wall_time_s'] / 60:.1f} min |",
        f"| (c) trained from scratch on the same hotel reviews | {acc['scratch']['new_domain']:.2%} | — | "
        f"{rows(scratch, 'hotel reviews')} | {scratch['steps']} | {scratch['wall_time_s'] / 60:.1f} min |",
        f"| TF-IDF ({tfidf['features']}) + LR on the same hotel reviews | {acc['tfidf']['new_domain']:.2%} | — | "
        f"{tfidf['train_examples']} hotel reviews | — | {tfidf['wall_time_s']:.0f} s |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data/online_shopping_10_cats",
                        help="folder with train.csv, valid.csv and test.csv (columns cat, label, review)")
    parser.add_argument("--model", default="e5-small-multilingual", help="base model name or folder")
    parser.add_argument("--train-examples", type=int, default=20000, help="cap on the non-hotel training rows")
    parser.add_argument("--examples", type=int, default=500, help="labelled hotel reviews for (b) and (c)")
    parser.add_argument("--epochs", type=int, default=10, help="epoch cap of (b) and (c); early stopping applies")
    parser.add_argument("--max-steps", type=int, default=None, help="step cap of every training run (smoke tests)")
    parser.add_argument("--work", default="runs/bench-domain", help="folder for the filtered files and the tasks")
    parser.add_argument("--report", default="reports/bench_domain.json", help="JSON report to write")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    opts = parser.parse_args()
    os.chdir(ROOT)
    import ecomnlp
    from ecomnlp.cli import train_arguments
    from ecomnlp.training import finetune

    work = Path(opts.work)
    parts = split_domain(Path(opts.data_dir), work / "data", DOMAIN)
    common = ["--model", opts.model, "--trainer.progress_bar", "false", "--lexical", "false"]
    if opts.max_steps:
        common += ["--trainer.max_steps", str(opts.max_steps)]
    source_args = train_arguments(CONFIG, [
        *common, "--out", str(work / "source"), "--data.train", parts["old_train"]["path"],
        "--data.valid", parts["old_valid"]["path"], "--data.test", "null",  # finetune scores (a) on both test parts
        "--data.max_train_examples", str(opts.train_examples), "--trainer.max_epochs", "1"])
    scratch_args = train_arguments(CONFIG, [
        *common, "--out", str(work / "scratch"), "--data.train", parts["new_train"]["path"], "--data.valid", "null",
        "--data.test", parts["new_test"]["path"], "--data.max_train_examples", str(opts.examples),
        "--trainer.max_epochs", str(opts.epochs)])

    print("== (a) trained without hotels", flush=True)
    source = ecomnlp.train(**source_args)
    print("== (b) fine-tuned on hotel reviews", flush=True)
    tuned = finetune(source["out"], scratch_args["data"], str(work / "finetuned"), opts.examples,
                     parts["old_test"]["path"], scratch_args["trainer"])
    print("== (c) trained from scratch on hotel reviews", flush=True)
    scratch = ecomnlp.train(**scratch_args)
    tfidf = tfidf_accuracy(scratch_args, opts.examples)

    before, after = tuned["metrics"]["before"], tuned["metrics"]["after"]
    report = {
        "model": opts.model, "domain": DOMAIN, "data_dir": opts.data_dir, "examples": opts.examples,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "parts": parts,
        "accuracy": {
            "no_finetune": {d: before[d]["accuracy"] for d in ("new_domain", "old_domain")},
            "finetuned": {d: after[d]["accuracy"] for d in ("new_domain", "old_domain")},
            "scratch": {"new_domain": scratch["metrics"]["test"]["accuracy"]},
            "tfidf": {"new_domain": tfidf["accuracy"]},
        },
        "source": source, "finetuned": tuned, "scratch": scratch, "tfidf": tfidf,
    }
    path = Path(opts.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    text = table(report)
    print(json.dumps(report["accuracy"], indent=2), text, sep="\n")
    if not opts.no_readme:
        write_readme_section("bench_domain", text)


if __name__ == "__main__":
    sys.exit(main())
