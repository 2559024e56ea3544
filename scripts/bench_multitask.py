"""Joint vs single-task benchmark: review sentiment and product category on online_shopping_10_cats,
trained (1) each alone and (2) jointly in one run, with the same rows, base model, LoRA and trainer
settings (all from configs/multitask.yaml). Test accuracy and wall time of both ways side by side.
Writes reports/bench_multitask.json and the README table (between the bench_multitask markers).

    python scripts/bench_multitask.py [--train-examples N] [--adapters per_task|shared]

`--train-examples` caps every task's training rows (the same seeded subset in both ways).
Smoke run: --model <tiny model dir> --data-dir <tiny copy> --train-examples 40 --max-steps 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from _bench import ROOT, publish

CONFIG = "configs/multitask.yaml"
GOAL_POINTS = 0.5  # joint accuracy within this many points of single-task, or above


def overrides(opts: argparse.Namespace, names: list[str]) -> list[str]:
    """Command-line overrides of configs/multitask.yaml that both ways share."""
    args = ["--model", opts.model, "--adapters", opts.adapters, "--trainer.progress_bar", "false"]
    if opts.max_steps:
        args += ["--trainer.max_steps", str(opts.max_steps)]
    for name in names:
        data = f"--tasks.{name}.data"
        args += [f"{data}.train", f"{opts.data_dir}/train.csv", f"{data}.valid", f"{opts.data_dir}/valid.csv",
                 f"{data}.test", f"{opts.data_dir}/test.csv"]
        if opts.train_examples:
            args += [f"{data}.max_train_examples", str(opts.train_examples)]
    return args


def table(r: dict[str, Any]) -> str:
    single, joint = r["single"], r["joint"]
    lines = [
        f"| {r['model']}, {r['adapters']} adapters | test accuracy, alone | test accuracy, joint | joint − alone "
        f"| within {GOAL_POINTS} pts or above | train rows | steps alone / joint |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in single.items():
        alone, together = s["metrics"]["test"]["accuracy"], joint["metrics"][name]["test"]["accuracy"]
        points = 100 * (together - alone)
        lines.append(f"| {name} ({s['metrics']['test']['examples']} test rows) | {alone:.2%} | {together:.2%} | "
                     f"{points:+.2f} pts | {'yes' if points >= -GOAL_POINTS else 'no'} | "
                     f"{s['train_examples']} of {s['train_rows_available']} | {s['steps']} / — |")
    alone_time = sum(s["wall_time_s"] for s in single.values())
    alone_steps = sum(s["steps"] for s in single.values())
    lines.append(f"| both, wall time | {alone_time / 60:.1f} min (sum of {len(single)} runs) | "
                 f"{joint['wall_time_s'] / 60:.1f} min (one run) | — | — | — | {alone_steps} / {joint['steps']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data/online_shopping_10_cats",
                        help="folder with train.csv, valid.csv and test.csv (columns cat, label, review)")
    parser.add_argument("--model", default="e5-small-multilingual", help="base model name or folder")
    parser.add_argument("--train-examples", type=int, default=None, help="cap on each task's training rows")
    parser.add_argument("--adapters", choices=["per_task", "shared"], default="per_task")
    parser.add_argument("--max-steps", type=int, default=None, help="step cap of every training run (smoke tests)")
    parser.add_argument("--work", default="runs/bench-multitask", help="folder for the trained tasks")
    parser.add_argument("--report", default="reports/bench_multitask.json", help="JSON report to write")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    opts = parser.parse_args()
    os.chdir(ROOT)
    import ecomnlp
    from ecomnlp.cli import multitask_arguments
    from ecomnlp.multitask import train_multitask

    names = list(multitask_arguments(CONFIG)["tasks"])
    work = Path(opts.work)
    args = multitask_arguments(CONFIG, [*overrides(opts, names), "--out", str(work / "joint")])
    single = {}
    for name, spec in args["tasks"].items():
        print(f"== {name} alone", flush=True)
        single[name] = ecomnlp.train(spec.task, spec.data, str(work / "single" / name), args["model"],
                                     spec.task_options, args["pooling"], args["lora"], args["trainer"])
    print("== joint", flush=True)
    joint = train_multitask(**args)
    report = {"model": opts.model, "adapters": opts.adapters, "sampler": args["sampler"],
              "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "single": single, "joint": joint}
    publish(report, opts.report, "bench_multitask", table(report), not opts.no_readme)


if __name__ == "__main__":
    sys.exit(main())
