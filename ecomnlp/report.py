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
import time
from pathlib import Path
from typing import Any

import yaml

from .artifact import write_json_atomic, write_text_atomic

_SCALARS = ("accuracy", "f1_macro", "f1_micro", "mae", "examples")


EXPLAINED_EXAMPLES = 3


def _baseline(trained: Any, test_rows: Any, test_targets: Any, out_dir: Path) -> dict[str, Any]:
    """The baseline's report on the same test rows, or why there is none."""
    from .baselines import describe, tfidf_logits
    from .data import encode_targets, load_rows

    task, card = trained.task, trained.card
    train_file = card.get("training", {}).get("train_file")
    if getattr(task, "multi_label", False) or len(task.schema.text) != 1:
        return {"skipped": "the TF-IDF baseline covers single-label, single-text tasks"}
    if not train_file or not Path(train_file).exists():
        return {"skipped": f"training file {train_file!r} is not available here"}
    mapping = card.get("columns", {})
    train = load_rows(train_file, task, mapping, "skip")
    train_targets = encode_targets(train, task, mapping.get(task.schema.label, task.schema.label))
    logits = tfidf_logits(train.texts[0], train_targets, test_rows.texts[0], len(task.labels))
    return {**describe(train.texts[0]), **task.evaluate(logits, test_targets, out_dir)}


def evaluate_suite(suite: str | Path) -> dict[str, Any]:
    """Evaluate every task of the suite file; write report.json, report.md and index.html."""
    from .evaluation import evaluate_loaded
    from .predictor import load

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
        trained = load(entry["model"])
        ours, rows, targets = evaluate_loaded(trained, entry["data"], str(folder), entry.get("columns"))
        ours["model"] = str(entry["model"])
        if spec.get("baseline", "tfidf") == "tfidf":
            base = _baseline(trained, rows, targets, folder / "baseline")
        else:
            base = {"skipped": "baseline: none"}
        examples = [dict(zip(trained.task.schema.text, t)) for t in zip(*(f[:EXPLAINED_EXAMPLES] for f in rows.texts))]
        explained = [{"input": e, **x} for e, x in zip(examples, trained.explain(examples))]
        entries.append({"name": entry["name"], "ours": ours, "baseline": base, "explanations": explained})
    report = {"suite": str(suite), "out": str(out), "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "tasks": entries}
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", _markdown(report))
    write_text_atomic(out / "index.html", _html(report))
    return report


def _explained(entry: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(text, predicted label with probability, words that mattered most) per explained example."""
    return [(" / ".join(str(v) for v in x["input"].values())[:120], f"{x['label']} ({x['probability']:.2f})",
             ", ".join(f"{t['token']} ({t['weight']:+.3f})" for t in x["tokens"]))
            for x in entry.get("explanations", [])]


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
        explained = _explained(entry)
        if explained:
            lines += ["", "Why (occlusion: drop in the predicted label's probability without each word):", "",
                      "| text | predicted | top words |", "|---|---|---|"]
            lines += [f"| {t.replace('|', '/')} | {p} | {w.replace('|', '/')} |" for t, p, w in explained]
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
        explained = _explained(entry)
        if explained:
            parts.append("<p>Why (occlusion: drop in the predicted label's probability without each word):</p>"
                         "<table><tr><th>text</th><th>predicted</th><th>top words</th></tr>")
            parts += [f"<tr><td>{esc(t)}</td><td>{esc(p)}</td><td>{esc(w)}</td></tr>" for t, p, w in explained]
            parts.append("</table>")
    return "\n".join(parts) + "\n"
