"""Fraud-detection benchmark, one run on the ULB credit-card transactions (284,807 rows, 492 frauds).

Temporal split (configs/fraud_detection.yaml): the earliest 80% by Time for training and validation (the latest
20% of those), the latest 20% for test. Side by side, on the same rows and the same features (the task's
FeaturePipeline: V1-V28 standardised, log Amount, and, for the supervised runs, the hour of day from Time as its
sine and cosine; our supervised MLP also embeds the amount's 16 quantile bins, a categorical column that the
trees and the baselines, which take the numeric columns, do not see):

  supervised    ours: MLP, class weights, early stopping on validation AUPRC, a seed ensemble, blended with
                gradient-boosted trees (the config as it is)
                logistic regression and histogram gradient-boosted trees (sklearn), each the best of a small grid
                by validation AUPRC
  unsupervised  ours (labels unused in training): denoising autoencoder, Deep SVDD, ECOD scored per record
                PyOD IsolationForest and PyOD ECOD, fitted on the same training rows

Test metrics: AUROC, AUPRC, recall at precision >= 0.9, precision of the top 100 alerts, and precision / recall at
the threshold chosen on validation (supervised: precision 0.9; unsupervised: 100 alerts a day). Wall time of each
training (grid searches included) and the peak RSS of the process. Writes reports/bench_fraud.json and the
README table (between the bench_fraud markers).

    python scripts/bench_fraud.py [--data creditcard.csv] [--threads 1]

Without --data the file is fetched (scripts/fetch_data.py ulb-fraud). Smoke run: --data <tiny csv with the same
columns> --max-epochs 1 --work <tmp> --report <tmp>.json --no-readme.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from ecomnlp.training import peak_rss_mb
from _bench import FRAUD_CONFIG as CONFIG, ROOT, fraud_arguments, publish, timed, ulb_file

GOALS = {"supervised_auprc": 0.85, "unsupervised_auroc": 0.95}
TOP_K = 100
# Our unsupervised runs: the config with these overrides (labels are read for the test metrics only).
UNSUPERVISED = ["--mode", "unsupervised", "--network.hidden", "[64]", "--network.bottleneck", "16",
                "--network.mask", "0.7", "--network.members", "1", "--network.trees", "0", "--trainer.max_epochs", "5",
                "--threshold.rule", "alerts_per_day", "--threshold.target", "100"]
# Left out of the unsupervised runs' features (ours and PyOD's): the hour of day lowered the denoising autoencoder's
# validation AUROC (0.948 -> 0.944, mean of 3 seeds), and the unsupervised settings were chosen without it. They were
# also chosen without quantile bins (the supervised MLP's amount bins came later), so those runs leave bins out too.
UNSUPERVISED_DROP = ("Time",)
DETECTORS = {"autoencoder": "denoising autoencoder", "deep_svdd": "Deep SVDD", "ecod": "ECOD, per record (saved)"}


def supervised_name(network: Any) -> str:
    """The supervised row's name: the config's classifier, with its ensemble size and trees' weight."""
    name = "ours: MLP, class weights" + (f", {network.members} seeds averaged" if network.members > 1 else "")
    return name + (f" + gradient-boosted trees (weight {network.trees:g})" if network.trees else "")


def ours(args: dict[str, Any], name: str, labels_used: bool) -> dict[str, Any]:
    from ecomnlp.tasks.fraud_detection import train_fraud

    summary, wall = timed(lambda: train_fraud(**args))
    return {"name": name, "labels_used": labels_used, "test": summary["metrics"]["test"],
            "threshold": summary["threshold"], "wall_time_s": wall, "steps": summary["steps"],
            "epochs": summary["epochs"], "peak_rss_mb": peak_rss_mb(), "out": summary["out"]}


def unsupervised_features(features: dict[str, Any]) -> dict[str, Any]:
    """The config's features without the columns in ``UNSUPERVISED_DROP`` and without bins."""
    return {**features, "numeric": {c: {k: v for k, v in (o or {}).items() if k != "buckets"}
                                    for c, o in features["numeric"].items() if c not in UNSUPERVISED_DROP}}


def baselines(args: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The classical baselines on the same split and features as our runs (supervised or unsupervised)."""
    import numpy as np

    from ecomnlp.detection import choose_threshold, detection_metrics
    from ecomnlp.detectors import SUPERVISED_BASELINES, baseline_scores
    from ecomnlp.features import FeaturePipeline
    from ecomnlp.tasks.fraud_detection import load_splits

    data, seed = args["data"], args["trainer"].seed
    splits = load_splits(data, "supervised", seed)

    def matrices(features: dict[str, Any]) -> dict[str, np.ndarray]:
        pipeline = FeaturePipeline(features).fit(splits.frames["train"])
        return {name: pipeline.transform(f).numeric.numpy() for name, f in splits.frames.items()}

    x, x_unsupervised = matrices(args["features"]), matrices(unsupervised_features(args["features"]))
    y = splits.labels
    times = splits.frames["valid"][data.time].to_numpy()
    rows = []
    for name, grid in SUPERVISED_BASELINES.items():
        def search() -> tuple[dict[str, Any], list[Any]]:
            tried = []
            for options in grid:
                valid, test = baseline_scores(name, x["train"], [x["valid"], x["test"]], y["train"], seed, options)
                tried.append((detection_metrics(valid, y["valid"], top_k=())["auprc"], options, valid, test))
            return max(tried, key=lambda t: t[0]), [(t[1], t[0]) for t in tried]
        ((_, options, valid, test), grid_scores), wall = timed(search)
        chosen = choose_threshold(valid, "precision", 0.9, y["valid"])
        rows.append({"name": name.replace("_", " "), "labels_used": True, "options": options,
                     "grid_valid_auprc": grid_scores, "test": detection_metrics(test, y["test"], chosen["value"]),
                     "threshold": chosen, "wall_time_s": wall, "peak_rss_mb": peak_rss_mb()})
    for name, label in (("iforest", "PyOD IsolationForest"), ("ecod", "PyOD ECOD")):
        (valid, test), wall = timed(lambda: baseline_scores(name, x_unsupervised["train"],
                                                            [x_unsupervised["valid"], x_unsupervised["test"]], seed=seed))
        chosen = choose_threshold(valid, "alerts_per_day", 100, times=times)
        rows.append({"name": label, "labels_used": False, "test": detection_metrics(test, y["test"], chosen["value"]),
                     "threshold": chosen, "wall_time_s": wall, "peak_rss_mb": peak_rss_mb()})
    split = {name: {"rows": len(f), "frauds": int(np.nansum(y[name]))} for name, f in splits.frames.items()}
    return rows, split


def example_alert(out: str, frame_source: dict[str, Any]) -> dict[str, Any]:
    """The saved supervised task reloaded: its highest-scored test record, scored with an explanation."""
    import ecomnlp
    from ecomnlp.tasks.fraud_detection import load_splits

    model = ecomnlp.load(out)
    splits = load_splits(frame_source["data"], "supervised", frame_source["trainer"].seed)
    test = splits.frames["test"]
    top = int(model.scores(test).argmax())
    record = test.iloc[[top]]
    return {"row": int(test.index[top]), "label": int(record[frame_source["data"].label].iloc[0]),
            **model.score(record, top_k=3)[0]}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def table(r: dict[str, Any]) -> str:
    split, goals = r["split"], r["goals"]
    lines = [
        f"ULB credit-card fraud, temporal split by `Time`: train {split['train']['rows']:,} rows "
        f"({split['train']['frauds']} frauds), validation {split['valid']['rows']:,} ({split['valid']['frauds']}), "
        f"test {split['test']['rows']:,} ({split['test']['frauds']}). {r['threads']} torch thread(s); "
        f"peak RSS of the whole run {r['peak_rss_mb']:,.0f} MB; total wall time {r['wall_time_s'] / 60:.1f} min.",
        "",
        "| method (test split) | labels in training | AUROC | AUPRC | recall @ precision ≥ 0.9 | precision @ top 100 "
        "| at the validation threshold: precision / recall (alerts) | train wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["runs"]:
        t = row["test"]
        at = t["at_threshold"]
        lines.append(
            f"| {row['name']} | {'yes' if row['labels_used'] else 'no'} | {t['auroc']:.4f} | {t['auprc']:.3f} | "
            f"{_pct(t['recall@precision0.9'])} | {_pct(t[f'precision@{TOP_K}'])} | "
            f"{_pct(at['precision'])} / {_pct(at['recall'])} ({at['alerts']}) | {row['wall_time_s']:.0f} s |")
    sup, unsup = goals["supervised_auprc"], goals["unsupervised_auroc"]
    lines += ["", f"Goals: supervised AUPRC ≥ {sup['goal']} — ours {sup['value']:.3f} "
                  f"({'met' if sup['met'] else 'not met'}); unsupervised AUROC ≥ {unsup['goal']} — ours "
                  f"({unsup['detector']}) {unsup['value']:.4f} ({'met' if unsup['met'] else 'not met'})."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="creditcard.csv (default: fetched into the cache)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--max-epochs", type=int, default=None, help="epoch cap of every training run (smoke tests)")
    parser.add_argument("--work", default="runs/bench-fraud", help="folder for the trained task directories")
    parser.add_argument("--report", default="reports/bench_fraud.json", help="JSON report to write")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    opts = parser.parse_args()
    os.chdir(ROOT)
    started = time.perf_counter()
    import torch

    torch.set_num_threads(opts.threads)
    opts.data = ulb_file(opts.data)
    work = Path(opts.work)

    def arguments(name: str, extra: list[str]) -> dict[str, Any]:
        epochs = ["--trainer.max_epochs", str(opts.max_epochs)] if opts.max_epochs else []
        args = fraud_arguments(opts.data, work / name, [*extra, *epochs])
        if args["mode"] == "unsupervised":
            args["features"] = unsupervised_features(args["features"])
        return args

    supervised_args = arguments("supervised", [])
    print("== baselines", flush=True)
    baseline_rows, split = baselines(supervised_args)
    print("== ours, supervised", flush=True)
    runs = [ours(supervised_args, supervised_name(supervised_args["network"]), True)]
    runs += [row for row in baseline_rows if row["labels_used"]]
    for detector, label in DETECTORS.items():
        print(f"== ours, unsupervised: {detector}", flush=True)
        runs.append(ours(arguments(detector, [*UNSUPERVISED, "--detector", detector]), f"ours: {label}", False))
    runs += [row for row in baseline_rows if not row["labels_used"]]

    supervised = runs[0]["test"]["auprc"]
    best_unsupervised = max((r for r in runs if r["name"].startswith("ours") and not r["labels_used"]),
                            key=lambda r: r["test"]["auroc"])
    report = {
        "data": opts.data, "config": CONFIG, "unsupervised_overrides": UNSUPERVISED,
        "unsupervised_features_dropped": list(UNSUPERVISED_DROP), "threads": opts.threads,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "split": split, "runs": runs,
        "goals": {
            "supervised_auprc": {"goal": GOALS["supervised_auprc"], "value": supervised,
                                 "met": supervised >= GOALS["supervised_auprc"]},
            "unsupervised_auroc": {"goal": GOALS["unsupervised_auroc"], "value": best_unsupervised["test"]["auroc"],
                                   "detector": best_unsupervised["name"].removeprefix("ours: "),
                                   "met": best_unsupervised["test"]["auroc"] >= GOALS["unsupervised_auroc"]},
        },
        "example_alert": example_alert(runs[0]["out"], supervised_args),
        "peak_rss_mb": peak_rss_mb(), "wall_time_s": round(time.perf_counter() - started, 1),
    }
    publish(report, opts.report, "bench_fraud", table(report), not opts.no_readme)


if __name__ == "__main__":
    sys.exit(main())
