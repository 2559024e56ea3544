"""One report over a suite of trained tasks: Markdown, JSON and a static HTML page with each
task's figures and, beside them, the same figures for a classical baseline.

A suite is a YAML file::

    out: reports/suite
    baseline: tfidf          # TF-IDF + LR fitted on each task's training file, or: none
    tasks:
      - {name: sentiment-zh, model: runs/sentiment-zh, data: ../shared/data/online_shopping_10_cats/test.csv}
      - {name: category-zh, model: runs/category-zh, data: ..., columns: {text: review, label: cat}}
"""
from __future__ import annotations

import html
import os
import time
from pathlib import Path
from typing import Any

import yaml

from .artifact import write_json_atomic
from .evaluation import evaluate, labelled

_SCALARS = ("accuracy", "f1_macro", "f1_micro", "mae", "examples")


def _baseline(model_dir: str, data: str, columns: dict[str, str] | None, out_dir: Path) -> dict[str, Any]:
    """The baseline's report on the same test rows, or why there is none."""
    from .baselines import describe, tfidf_logits
    from .data import encode_targets, load_rows
    from .predictor import load

    trained = load(model_dir)
    task, card = trained.task, trained.card
    train_file = card.get("training", {}).get("train_file")
    if getattr(task, "multi_label", False) or len(task.schema.text) != 1:
        return {"skipped": "the TF-IDF baseline covers single-label, single-text tasks"}
    if not train_file or not Path(train_file).exists():
        return {"skipped": f"training file {train_file!r} is not available here"}
    mapping = card.get("columns", {})
    train = load_rows(train_file, task, mapping, "skip")
    train_targets = encode_targets(train, task, mapping.get(task.schema.label, task.schema.label))
    rows, targets = labelled(trained, data, columns, "skip")
    logits = tfidf_logits(train.texts[0], train_targets, rows.texts[0], len(task.labels))
    return {**describe(train.texts[0]), **task.evaluate(logits, targets, out_dir)}


def evaluate_suite(suite: str | Path) -> dict[str, Any]:
    """Evaluate every task of the suite file; write report.json, report.md and index.html."""
    spec = yaml.safe_load(Path(suite).read_text(encoding="utf-8")) or {}
    if not spec.get("tasks"):
        raise ValueError(f"{suite}: lists no tasks (expected a 'tasks:' list of {{name, model, data}})")
    out = Path(spec.get("out", "reports/suite"))
    entries = []
    for i, entry in enumerate(spec["tasks"], start=1):
        missing = [k for k in ("name", "model", "data") if k not in entry]
        if missing:
            raise ValueError(f"{suite}: task {i} lacks {missing}")
        folder = out / entry["name"]
        ours = evaluate(entry["model"], entry["data"], str(folder), entry.get("columns"))
        base = (_baseline(entry["model"], entry["data"], entry.get("columns"), folder / "baseline")
                if spec.get("baseline", "tfidf") == "tfidf" else {"skipped": "baseline: none"})
        entries.append({"name": entry["name"], "ours": ours, "baseline": base})
    report = {"suite": str(suite), "out": str(out), "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tasks": entries}
    write_json_atomic(out / "report.json", report)
    _write_text(out / "report.md", _markdown(report))
    _write_text(out / "index.html", _html(report))
    return report


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _rows(entry: dict[str, Any]) -> list[tuple[str, str, str]]:
    def fmt(report: dict[str, Any], key: str) -> str:
        value = report.get(key)
        return "—" if value is None else (str(value) if key == "examples" else f"{value:.4f}")

    ours, base = entry["ours"], entry["baseline"]
    return [(k, fmt(ours, k), fmt(base, k)) for k in _SCALARS if k in ours]


def _about(base: dict[str, Any]) -> str:
    return base.get("skipped") or f"{base['name']}, {base['features']}, {base['train_examples']} training rows"


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# Evaluation report", "", f"Suite `{report['suite']}`, {report['created']}.", ""]
    for entry in report["tasks"]:
        ours, base = entry["ours"], entry["baseline"]
        lines += [f"## {entry['name']} — `{ours['task']}`", "",
                  f"Model `{ours['model']}` on `{ours['data']}`. Baseline: {_about(base)}.",
                  "", "| metric | ours | baseline |", "|---|---|---|"]
        lines += [f"| {k} | {a} | {b} |" for k, a, b in _rows(entry)]
        for figure in ours.get("figures", []):
            beside = f" ![baseline](./{entry['name']}/baseline/{figure})" if figure in base.get("figures", []) else ""
            lines += ["", f"![ours](./{entry['name']}/{figure}){beside}"]
        lines.append("")
    return "\n".join(lines)


def _html(report: dict[str, Any]) -> str:
    esc = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>ecomnlp evaluation report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 10px}figure{display:inline-block;margin:8px}"
             "img{max-width:500px}</style>",
             f"<h1>Evaluation report</h1><p>Suite <code>{esc(report['suite'])}</code>, {esc(report['created'])}.</p>"]
    for entry in report["tasks"]:
        ours, base = entry["ours"], entry["baseline"]
        about = _about(base)
        parts.append(f"<h2>{esc(entry['name'])} — <code>{esc(ours['task'])}</code></h2>"
                     f"<p>Model <code>{esc(ours['model'])}</code> on <code>{esc(ours['data'])}</code>. "
                     f"Baseline: {esc(about)}.</p><table><tr><th>metric</th><th>ours</th><th>baseline</th></tr>")
        parts += [f"<tr><td>{esc(k)}</td><td>{a}</td><td>{b}</td></tr>" for k, a, b in _rows(entry)]
        parts.append("</table>")
        for figure in ours.get("figures", []):
            parts.append(f"<div><figure><img src='{esc(entry['name'])}/{esc(figure)}'><figcaption>ours</figcaption></figure>")
            if figure in base.get("figures", []):
                parts.append(f"<figure><img src='{esc(entry['name'])}/baseline/{esc(figure)}'>"
                             "<figcaption>baseline</figcaption></figure>")
            parts.append("</div>")
    return "\n".join(parts) + "\n"
