"""Quality benchmark: train each task on real data, evaluate on its test split, and measure a
TF-IDF + logistic-regression baseline on the same split in the same run. Writes
reports/bench_quality.json and the README results table (between the bench_quality markers).

    python scripts/bench_quality.py [--zh-train-examples N] [--only NAME ...] [--add-lexical | --ensemble-seeds N ...]

`--zh-train-examples` caps the Chinese training rows (a seeded random subset, the same one the
baseline is also fitted on); the table states how many rows and steps produced each figure.
`--add-lexical` trains nothing: it adds a lexical part (`ecomnlp add-lexical`: TF-IDF + LR on the same
training rows, blend weight chosen on validation) to each case's trained directory from an earlier run
and fills the table's blend column; the encoder-alone and TF-IDF-alone figures of that run sit beside it.
`--ensemble-seeds N ...` averages each case's trained directory from an earlier run with adapters of the same
config trained with seeds N ... (`ecomnlp ensemble`, the config's lexical part fitted again) and writes a second
table (between the bench_quality_ensemble markers): test accuracy of the average, and the validation accuracies
that choose between one adapter and it.
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


def add_lexical_case(case: Case, zh_limit: int | None, out_root: Path) -> dict:
    """``add_lexical`` on the case's trained directory (``out_root/<case>``), written to ``out_root/<case>-lexical``."""
    from ecomnlp.cli import train_arguments
    from ecomnlp.training import add_lexical

    overrides = ["--data.max_train_examples", str(zh_limit)] if zh_limit and case.chinese else []
    args = train_arguments(str(ROOT / case.config), overrides)
    return add_lexical(str(out_root / case.name), args["data"], str(out_root / f"{case.name}-lexical"))


_SAME_RUN = ("lora", "max_length", "base_dropout")  # card fields an ensemble member must share with the first


def ensemble_case(case: Case, seeds: list[int], zh_limit: int | None, out_root: Path) -> dict:
    """The case's trained directory (``out_root/<case>``, from an earlier run) averaged with one adapter per extra
    seed (``out_root/<case>.seed<N>``, the same config): ``ecomnlp ensemble`` into ``out_root/<case>.ensemble``.
    A member directory that an earlier call left with the same seed and settings is reused, not trained again."""
    import ecomnlp
    from ecomnlp.artifact import read_card
    from ecomnlp.cli import train_arguments
    from ecomnlp.ensemble import build_ensemble

    cap = ["--data.max_train_examples", str(zh_limit)] if zh_limit and case.chinese else []
    first = read_card(out_root / case.name)

    def settings(card: dict) -> tuple:
        t = card["training"]
        return tuple(card.get(k, t.get(k)) for k in _SAME_RUN) + (t["train_examples"], t["steps"])

    members, cards = [out_root / case.name], [first]
    for seed in seeds:
        path = out_root / f"{case.name}.seed{seed}"
        card = read_card(path) if (path / "card.json").exists() else None
        if card is None or card["training"]["seed"] != seed or settings(card) != settings(first):
            print(f"training {path} (seed {seed})", flush=True)
            ecomnlp.train(**train_arguments(str(ROOT / case.config), ["--out", str(path), "--trainer.progress_bar",
                                                                      "false", "--trainer.seed", str(seed), *cap]))
            card = read_card(path)
        else:
            print(f"reusing {path} (seed {seed}, trained {card['created']})", flush=True)
        members.append(path)
        cards.append(card)
    args = train_arguments(str(ROOT / case.config), cap)
    summary = build_ensemble([str(m) for m in members], args["data"], str(out_root / f"{case.name}.ensemble"),
                             bool(args["lexical"]))
    return {**summary, "seeds": [c["training"]["seed"] for c in cards],
            "train_wall_time_s": [c["training"]["wall_time_s"] for c in cards],
            "member_valid": [c["metrics"]["valid"] for c in cards]}


def _blend(r: dict) -> tuple[dict, float] | None:
    """(test metrics, weight) of the case with its lexical part: fitted in training (the config's ``lexical``)
    or added later (``--add-lexical``, which wins); None if neither."""
    if "lexical" in r:
        return r["lexical"]["metrics"]["test"], r["lexical"]["lexical"]["weight"]
    if "encoder" in r["ours"]["metrics"]["test"]:
        return r["ours"]["metrics"]["test"], r["ours"]["lexical_weight"]
    return None


def _blend_cell(r: dict) -> str:
    """Test accuracy with the lexical part, its weight, and whether that meets the goal; '—' if not measured."""
    blend = _blend(r)
    if blend is None:
        return "—"
    acc = blend[0]["accuracy"]
    return f"{acc:.2%} (w={blend[1]:.2f}; {'met' if acc >= r['goal'] else 'not met'})"


def table(results: list[dict]) -> str:
    lines = [
        "| task (test split) | base model | ours: accuracy | TF-IDF+LR, same rows | TF-IDF+LR, full train | goal | ours + lexical part | train rows | steps | max len | train wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ours = r["ours"]
        test = ours["metrics"]["test"]
        acc = test.get("encoder", test)["accuracy"]  # the encoder alone, also when training fitted a lexical part
        mark = "met" if acc >= r["goal"] else "not met"
        lines.append(
            f"| {r['case']} ({ours['metrics']['test']['examples']} rows) | {r['model']} | **{acc:.2%}** | "
            f"{r['tfidf_same_rows']['accuracy']:.2%} | {r['tfidf_full_train']['accuracy']:.2%} "
            f"({r['tfidf_full_train']['train_examples']} rows) | {r['goal']:.1%} ({mark}) | {_blend_cell(r)} | "
            f"{ours['train_examples']} of {ours['train_rows_available']} | {ours['steps']} | {ours['max_length']} | "
            f"{ours['wall_time_s'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def ensemble_table(results: list[dict]) -> str:
    """One row per case averaged over seeds (``--ensemble-seeds``): test accuracy of the members averaged, with
    the lexical part, and the validation accuracies that would choose between one adapter and the average."""
    lines = [
        "| task (test split) | adapters averaged (seeds) | ours: accuracy, averaged | + lexical part | goal | "
        "validation, one adapter → averaged (with lexical part) | train wall time, all members |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in [r for r in results if "ensemble" in r]:
        e = r["ensemble"]
        test, valid, one = e["metrics"]["test"], e["metrics"]["valid"], e["member_valid"][0]
        encoder = test.get("encoder", test)["accuracy"]
        blend = f"{test['accuracy']:.2%} (w={e['lexical_weight']:.2f})" if "encoder" in test else "—"
        mark = "met" if test["accuracy"] >= r["goal"] else "not met"
        lexical = (f" ({one['accuracy']:.2%} → {valid['accuracy']:.2%})" if "encoder" in valid else "")
        lines.append(
            f"| {r['case']} ({test['examples']} rows) | {len(e['seeds'])} ({', '.join(map(str, e['seeds']))}) | "
            f"**{encoder:.2%}** | {blend} | {r['goal']:.1%} ({mark}) | "
            f"{one.get('encoder', one)['accuracy']:.2%} → {valid.get('encoder', valid)['accuracy']:.2%}{lexical} | "
            f"{' + '.join(f'{t / 60:.1f}' for t in e['train_wall_time_s'])} min |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zh-train-examples", type=int, default=None, help="cap on Chinese training rows")
    parser.add_argument("--only", nargs="*", default=None, help="case names to run")
    parser.add_argument("--out", default="runs/bench", help="where trained tasks go")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    parser.add_argument("--add-lexical", action="store_true",
                        help="train nothing: add a lexical part to each case trained by an earlier run")
    parser.add_argument("--ensemble-seeds", nargs="+", type=int, default=None,
                        help="average each case trained by an earlier run with adapters of these seeds")
    opts = parser.parse_args()
    os.chdir(ROOT)
    report_path = ROOT / "reports" / "bench_quality.json"
    # Each row is one case trained and baselined in one run; `--only` refreshes some rows, keeps the others.
    reuse = opts.only or opts.add_lexical or opts.ensemble_seeds
    previous = json.loads(report_path.read_text()) if report_path.exists() and reuse else []
    results = {r["case"]: r for r in previous}
    for case in CASES:
        if opts.only and case.name not in opts.only:
            continue
        print(f"== {case.name}", flush=True)
        if (opts.add_lexical or opts.ensemble_seeds) and case.name not in results:
            raise SystemExit(f"{report_path} has no row for {case.name}: run this script for it without "
                             "--add-lexical or --ensemble-seeds first")
        if opts.ensemble_seeds:
            results[case.name]["ensemble"] = ensemble_case(case, opts.ensemble_seeds, opts.zh_train_examples,
                                                           Path(opts.out))
        elif opts.add_lexical:
            lexical = add_lexical_case(case, opts.zh_train_examples, Path(opts.out))
            trained_on = results[case.name]["ours"]["train_examples"]
            if lexical["lexical"]["train_examples"] != trained_on:
                raise SystemExit(f"{case.name}: the lexical part saw {lexical['lexical']['train_examples']} training "
                                 f"rows, the encoder {trained_on}: give the same --zh-train-examples as that run")
            results[case.name]["lexical"] = lexical
        else:
            results[case.name] = run_case(case, opts.zh_train_examples, Path(opts.out))
        report_path.parent.mkdir(exist_ok=True)
        report_path.write_text(json.dumps(list(results.values()), indent=2, ensure_ascii=False))
        print(json.dumps(results[case.name], indent=2, ensure_ascii=False), flush=True)
    ordered = [results[c.name] for c in CASES if c.name in results]
    # --ensemble-seeds changes only the ensembles' table; the other modes only the main one
    section, text = (("bench_quality_ensemble", ensemble_table(ordered)) if opts.ensemble_seeds
                     else ("bench_quality", table(ordered)))
    print(text)
    if not opts.no_readme:
        write_readme_section(section, text)


if __name__ == "__main__":
    sys.exit(main())
