"""Quality benchmark: train each task on real data, evaluate on its test split, and measure a
TF-IDF + logistic-regression baseline on the same split in the same run. Writes
reports/bench_quality.json and the README results table (between the bench_quality markers).

    python scripts/bench_quality.py [--zh-train-examples N] [--only NAME ...]

`--zh-train-examples` caps the Chinese training rows (a seeded random subset, the same one the
baseline is also fitted on); the table states how many rows and steps produced each figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _bench import ROOT, tfidf_accuracy, write_readme_section


@dataclass
class Case:
    name: str
    config: str
    goal: float
    chinese: bool


CASES = [
    Case("sentiment-en", "configs/review_sentiment_en.yaml", 0.85, False),
    Case("sentiment-zh", "configs/review_sentiment.yaml", 0.955, True),
    Case("category-zh", "configs/product_classification.yaml", 0.915, True),
]


def run_case(case: Case, zh_limit: int | None, out_root: Path) -> dict:
    import ecomnlp
    from ecomnlp.cli import train_arguments

    overrides = ["--out", str(out_root / case.name), "--trainer.progress_bar", "false"]
    limit = zh_limit if case.chinese else None
    if limit:
        overrides += ["--data.max_train_examples", str(limit)]
    args = train_arguments(str(ROOT / case.config), overrides)
    baseline_full = tfidf_accuracy(args, None)
    baseline_same = tfidf_accuracy(args, limit) if limit else baseline_full
    summary = ecomnlp.train(**args)
    return {"case": case.name, "model": args["model"], "task": args["task"], "goal": case.goal,
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "ours": summary, "tfidf_full_train": baseline_full, "tfidf_same_rows": baseline_same}


def table(results: list[dict]) -> str:
    lines = [
        "| task (test split) | base model | ours: accuracy | TF-IDF+LR, same rows | TF-IDF+LR, full train | goal | train rows | steps | max len | train wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ours = r["ours"]
        acc = ours["metrics"]["test"]["accuracy"]
        mark = "met" if acc >= r["goal"] else "not met"
        lines.append(
            f"| {r['case']} ({ours['metrics']['test']['examples']} rows) | {r['model']} | **{acc:.2%}** | "
            f"{r['tfidf_same_rows']['accuracy']:.2%} | {r['tfidf_full_train']['accuracy']:.2%} "
            f"({r['tfidf_full_train']['train_examples']} rows) | {r['goal']:.1%} ({mark}) | "
            f"{ours['train_examples']} of {ours['train_rows_available']} | {ours['steps']} | {ours['max_length']} | "
            f"{ours['wall_time_s'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zh-train-examples", type=int, default=None, help="cap on Chinese training rows")
    parser.add_argument("--only", nargs="*", default=None, help="case names to run")
    parser.add_argument("--out", default="runs/bench", help="where trained tasks go")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    opts = parser.parse_args()
    os.chdir(ROOT)
    report_path = ROOT / "reports" / "bench_quality.json"
    # Each row is one case trained and baselined in one run; `--only` refreshes some rows, keeps the others.
    previous = json.loads(report_path.read_text()) if report_path.exists() and opts.only else []
    results = {r["case"]: r for r in previous}
    for case in CASES:
        if opts.only and case.name not in opts.only:
            continue
        print(f"== {case.name}", flush=True)
        results[case.name] = run_case(case, opts.zh_train_examples, Path(opts.out))
        report_path.parent.mkdir(exist_ok=True)
        report_path.write_text(json.dumps(list(results.values()), indent=2, ensure_ascii=False))
        print(json.dumps(results[case.name], indent=2, ensure_ascii=False), flush=True)
    text = table([results[c.name] for c in CASES if c.name in results])
    print(text)
    if not opts.no_readme:
        write_readme_section("bench_quality", text)


if __name__ == "__main__":
    sys.exit(main())
