"""One report over a suite of trained tasks: Markdown, JSON and a static HTML page with each
task's metrics table and figures and, beside them, the same for a classical baseline.

A suite is a YAML file::

    out: reports/suite
    baseline: classical      # each task's classical baseline (below), or: none
    tasks:
      - {name: sentiment-zh, model: runs/sentiment-zh, data: ../shared/data/online_shopping_10_cats/test.csv}
      - {name: category-zh, model: runs/category-zh, data: ..., columns: {text: review, label: cat}}
      - {name: fraud, model: runs/fraud, data: test.csv}
      - {name: reco, model: runs/reco, data: {interactions: ml-100k.inter, test_fraction: 0.25}}
      - {name: support, model: runs/support, data: questions.jsonl, limit: 40}

Each entry is evaluated as its model's kind says (``report_sections``):

- text classification: accuracy, F1, confusion matrices and occlusion explanations on a labelled file
  (``columns`` as in ``ecomnlp evaluate``); baseline TF-IDF + logistic regression fitted on the task's training file.
- fraud: AUROC, AUPRC, recall at precision 0.9, precision of the top-k alerts, the confusion at the saved
  threshold, PR and ROC curves, and the fields behind the highest-scored records, on a labelled file (the card's
  label column) or the test split of the task's data settings; baseline logistic regression (supervised) or PyOD
  IsolationForest on the task's numeric features, fitted on the training records.
- recommendation: nDCG, hit rate, precision and recall at K = 1, 5, 10, 20 and the nDCG@K curve, on a file of
  held-out interactions or the test split of the task's data settings; baseline the most popular items.
- chat: retrieval recall@k, hand-off rate on out-of-KB questions, false hand-off rate and the share of replies
  that state the entry's key fact, on a questions file (``limit``: at most that many replies generated;
  ``max_new_tokens``); baseline the same bot with its LoRA adapter off.

``baseline: tfidf`` (the earlier name) means ``classical``.
"""
from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import yaml

from .artifact import CHAT_KIND, FRAUD_KIND, RECO_KIND, read_card, write_json_atomic, write_text_atomic

TEXT_KIND = "text classification"  # encoder tasks' cards have no "kind"
SECTIONS = {TEXT_KIND: "text_section", FRAUD_KIND: "fraud_section", RECO_KIND: "recommendation_section",
            CHAT_KIND: "chat_section"}
BASELINES = ("classical", "tfidf", "none")


def _evaluate_entry(entry: dict[str, Any], folder: Path, baseline: bool, where: str) -> dict[str, Any]:
    """One task's part of the report; an error says which suite entry it comes from."""
    from . import report_sections
    from .predictor import load

    try:
        kind = read_card(entry["model"]).get("kind") or TEXT_KIND
        if kind not in SECTIONS:
            raise ValueError(f"{entry['model']}: the report has no section for kind '{kind}' "
                             f"(it covers: {', '.join(SECTIONS)})")
        section = getattr(report_sections, SECTIONS[kind])(load(entry["model"]), entry, folder, baseline)
    except (ValueError, OSError) as err:
        err.add_note(f"in {where}")
        raise
    section["ours"]["model"] = str(entry["model"])
    write_json_atomic(folder / "metrics.json", section["ours"])
    return {"name": entry["name"], "kind": kind, **section,
            "baseline": section["baseline"] or {"skipped": "baseline: none"}}


def evaluate_suite(suite: str | Path) -> dict[str, Any]:
    """Evaluate every task of the suite file; write report.json, report.md and index.html."""
    spec = yaml.safe_load(Path(suite).read_text(encoding="utf-8")) or {}
    if not spec.get("tasks"):
        raise ValueError(f"{suite}: lists no tasks (expected a 'tasks:' list of {{name, model, data}})")
    baseline = spec.get("baseline", "classical")
    if baseline not in BASELINES:
        raise ValueError(f"{suite}: baseline must be classical or none, not {baseline!r}")
    out = Path(spec.get("out", "reports/suite"))
    for i, entry in enumerate(spec["tasks"], start=1):
        missing = [k for k in ("name", "model", "data") if k not in entry]
        if missing:
            raise ValueError(f"{suite}: task {i} lacks {missing}")
    names = [entry["name"] for entry in spec["tasks"]]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{suite}: task names {repeated} are used twice (each names its report folder)")
    entries = [_evaluate_entry(entry, out / entry["name"], baseline != "none", f"{suite}, task {i} ({entry['name']})")
               for i, entry in enumerate(spec["tasks"], start=1)]
    report = {"suite": str(suite), "out": str(out), "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "tasks": entries}
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", _markdown(report))
    write_text_atomic(out / "index.html", _html(report))
    return report


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)[:60]


def _explained_text(entry: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(" / ".join(str(v) for v in x["input"].values())[:120], f"{x['label']} ({x['probability']:.2f})",
             ", ".join(f"{t['token']} ({t['weight']:+.3f})" for t in x["tokens"]))
            for x in entry["explanations"]]


def _explained_fraud(entry: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(f"row {x['row']}" + ("" if x["label"] is None else f", label {x['label']}"),
             f"{x['score']:.4f}" + (" (alert)" if x["alert"] else ""),
             ", ".join(f"{e['field']} = {_short(e['value'])} ({e['contribution']:+.3f})" for e in x["explanation"]))
            for x in entry["explanations"]]


# kind -> (caption, column names, rows of the explained examples)
_WHY = {
    TEXT_KIND: ("Why (occlusion: drop in the predicted label's probability without each word):",
                ("text", "predicted", "top words"), _explained_text),
    FRAUD_KIND: ("Why (occlusion: the score minus the score with each field at a typical value), for the "
                 "highest-scored records:", ("record", "score", "fields that raised it"), _explained_fraud),
}


def _explained(entry: dict[str, Any]) -> tuple[str, tuple[str, str, str], list[tuple[str, str, str]]] | None:
    """The caption, column names and rows of the entry's explained examples; None without any."""
    if not entry.get("explanations") or entry["kind"] not in _WHY:
        return None
    caption, columns, rows = _WHY[entry["kind"]]
    return caption, columns, rows(entry)


def _lookup(report: dict[str, Any], key: str) -> Any:
    """``report[key]``; "a/b" is ``report["a"]["b"]``; None where missing."""
    for part in key.split("/"):
        report = report.get(part) if isinstance(report, dict) else None
    return report


def _fmt(value: Any) -> str:
    if value is None or value != value:  # missing, or NaN
        return "—"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def table_rows(entry: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, ours, baseline) for each metric of the entry's table, formatted."""
    return [(k, _fmt(_lookup(entry["ours"], k)), _fmt(_lookup(entry["baseline"], k))) for k in entry["table"]]


def _about(base: dict[str, Any]) -> str:
    if "skipped" in base:
        return base["skipped"]
    rows = [f"{base['train_examples']} training rows"] if "train_examples" in base else []
    return ", ".join([base["name"], base["features"], *rows])


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# Evaluation report", "", f"Suite `{report['suite']}`, {report['created']}.", ""]
    for entry in report["tasks"]:
        ours, base = entry["ours"], entry["baseline"]
        lines += [f"## {entry['name']} — `{ours['task']}`", "",
                  f"Model `{ours['model']}` on `{ours['data']}`. Baseline: {_about(base)}.",
                  "", "| metric | ours | baseline |", "|---|---|---|"]
        lines += [f"| {k} | {a} | {b} |" for k, a, b in table_rows(entry)]
        for figure in ours.get("figures", []):
            beside = f" ![baseline](./{entry['name']}/baseline/{figure})" if figure in base.get("figures", []) else ""
            lines += ["", f"![ours](./{entry['name']}/{figure}){beside}"]
        explained = _explained(entry)
        if explained:
            caption, columns, rows = explained
            lines += ["", caption, "", f"| {' | '.join(columns)} |", "|---|---|---|"]
            lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
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
        parts.append(f"<h2>{esc(entry['name'])} — <code>{esc(ours['task'])}</code></h2>"
                     f"<p>Model <code>{esc(ours['model'])}</code> on <code>{esc(ours['data'])}</code>. "
                     f"Baseline: {esc(_about(base))}.</p><table><tr><th>metric</th><th>ours</th><th>baseline</th></tr>")
        parts += [f"<tr><td>{esc(k)}</td><td>{a}</td><td>{b}</td></tr>" for k, a, b in table_rows(entry)]
        parts.append("</table>")
        for figure in ours.get("figures", []):
            parts.append(f"<div><figure><img src='{esc(entry['name'])}/{esc(figure)}'><figcaption>ours</figcaption></figure>")
            if figure in base.get("figures", []):
                parts.append(f"<figure><img src='{esc(entry['name'])}/baseline/{esc(figure)}'>"
                             "<figcaption>baseline</figcaption></figure>")
            parts.append("</div>")
        explained = _explained(entry)
        if explained:
            caption, columns, rows = explained
            parts.append(f"<p>{esc(caption)}</p><table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows]
            parts.append("</table>")
    return "\n".join(parts) + "\n"
