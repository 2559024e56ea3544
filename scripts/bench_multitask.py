"""Joint vs single-task benchmark: review sentiment and product category on online_shopping_10_cats,
trained (1) each alone and (2) jointly in one run, with the same rows, base model, LoRA and trainer
settings (all from configs/multitask.yaml). Test accuracy and wall time of both ways side by side,
for each of several seeds (a seed draws the rows, the adapters' initialisation and the batch order; both
ways share it), and the mean over seeds: one seed's difference is within training noise.
Writes reports/bench_multitask.json and the README table (between the bench_multitask markers).

    python scripts/bench_multitask.py [--train-examples N] [--adapters per_task|shared] [--seeds 42 43 44] [--resume]

`--train-examples` caps every task's training rows (the same seeded subset in both ways). Each finished seed
is saved as <work>/seed-<seed>/run.json with the settings it ran under; `--resume` reuses a seed whose
settings are the same instead of training it again (a long benchmark can then span several sittings).
Smoke run: --model <tiny model dir> --data-dir <tiny copy> --train-examples 40 --max-steps 2.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
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


def accuracies(run: dict[str, Any], name: str) -> tuple[float, float]:
    """(alone, joint) test accuracy of task ``name`` in one seed's ``run``."""
    return run["single"][name]["metrics"]["test"]["accuracy"], run["joint"]["metrics"][name]["test"]["accuracy"]


def table(r: dict[str, Any]) -> str:
    runs = r["runs"]
    seeds = ", ".join(str(run["seed"]) for run in runs)
    lines = [
        f"| {r['model']}, {r['adapters']} adapters, mean of {len(runs)} seeds ({seeds}) | test accuracy, alone "
        f"| test accuracy, joint | joint − alone (each seed) | within {GOAL_POINTS} pts or above | train rows "
        f"| steps alone / joint |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in runs[0]["single"].items():
        pairs = [accuracies(run, name) for run in runs]
        alone, together = (statistics.mean(p[i] for p in pairs) for i in (0, 1))
        points = 100 * (together - alone)
        each = ", ".join(f"{100 * (j - a):+.2f}" for a, j in pairs)
        lines.append(f"| {name} ({s['metrics']['test']['examples']} test rows) | {alone:.2%} | {together:.2%} | "
                     f"{points:+.2f} pts ({each}) | {'yes' if points >= -GOAL_POINTS else 'no'} | "
                     f"{s['train_examples']} of {s['train_rows_available']} | {s['steps']} / — |")
    alone_time = statistics.mean(sum(s["wall_time_s"] for s in run["single"].values()) for run in runs)
    joint_time = statistics.mean(run["joint"]["wall_time_s"] for run in runs)
    alone_steps = sum(s["steps"] for s in runs[0]["single"].values())
    lines.append(f"| both, wall time per seed | {alone_time / 60:.1f} min (sum of {len(runs[0]['single'])} runs) | "
                 f"{joint_time / 60:.1f} min (one run) | — | — | — | {alone_steps} / {runs[0]['joint']['steps']} |")
    return "\n".join(lines)


def run_seed(opts: argparse.Namespace, names: list[str], seed: int) -> dict[str, Any]:
    """Both ways for one seed: each task alone, then jointly; saved as ``<work>/seed-<seed>/run.json``.
    With ``opts.resume``, a saved run with the same settings is returned instead of training again."""
    import ecomnlp
    from ecomnlp.artifact import write_json_atomic
    from ecomnlp.cli import multitask_arguments
    from ecomnlp.multitask import train_multitask

    work = Path(opts.work) / f"seed-{seed}"
    settings = [*overrides(opts, names), "--trainer.seed", str(seed), "--out", str(work / "joint")]
    saved = work / "run.json"
    if opts.resume and saved.exists():
        run = json.loads(saved.read_text(encoding="utf-8"))
        if run["settings"] == settings:
            print(f"== seed {seed}: reusing {saved}", flush=True)
            return run
        print(f"== seed {seed}: {saved} ran under other settings; training again", flush=True)
    args = multitask_arguments(CONFIG, settings)
    single = {}
    for name, spec in args["tasks"].items():
        print(f"== seed {seed}: {name} alone", flush=True)
        single[name] = ecomnlp.train(spec.task, spec.data, str(work / "single" / name), args["model"],
                                     spec.task_options, args["pooling"], args["lora"], args["trainer"])
    print(f"== seed {seed}: joint", flush=True)
    run = {"seed": seed, "settings": settings, "sampler": args["sampler"], "single": single,
           "joint": train_multitask(**args)}
    write_json_atomic(saved, run)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data/online_shopping_10_cats",
                        help="folder with train.csv, valid.csv and test.csv (columns cat, label, review)")
    parser.add_argument("--model", default="e5-small-multilingual", help="base model name or folder")
    parser.add_argument("--train-examples", type=int, default=None, help="cap on each task's training rows")
    parser.add_argument("--adapters", choices=["per_task", "shared"], default="per_task")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="one run of both ways per seed")
    parser.add_argument("--max-steps", type=int, default=None, help="step cap of every training run (smoke tests)")
    parser.add_argument("--work", default="runs/bench-multitask", help="folder for the trained tasks")
    parser.add_argument("--report", default="reports/bench_multitask.json", help="JSON report to write")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    parser.add_argument("--resume", action="store_true",
                        help="reuse each seed's saved run (<work>/seed-<seed>/run.json) when its settings match")
    opts = parser.parse_args()
    os.chdir(ROOT)
    from ecomnlp.cli import multitask_arguments

    names = list(multitask_arguments(CONFIG)["tasks"])
    runs = [run_seed(opts, names, seed) for seed in opts.seeds]
    report = {"model": opts.model, "adapters": opts.adapters, "sampler": runs[0]["sampler"],
              "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs}
    publish(report, opts.report, "bench_multitask", table(report), not opts.no_readme)


if __name__ == "__main__":
    sys.exit(main())
