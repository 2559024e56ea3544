"""What the benchmark scripts share: the README table writer, a timer, the fraud task's arguments and data file,
and the TF-IDF + LR accuracy baseline."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
FRAUD_CONFIG = "configs/fraud_detection.yaml"


def write_readme_section(name: str, text: str, readme: Path = ROOT / "README.md") -> None:
    """Replace what lies between ``<!-- name:start -->`` and ``<!-- name:end -->`` in the README, atomically."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    body = readme.read_text(encoding="utf-8")
    if start not in body or end not in body:
        raise SystemExit(f"{readme.name} has no {start} ... {end} markers")
    head, rest = body.split(start, 1)
    tail = rest.split(end, 1)[1]
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{start}\n{text}\n{end}{tail}", encoding="utf-8")
    os.replace(tmp, readme)


def publish(report: dict[str, Any], path: str | Path, section: str, text: str, readme: bool = True) -> None:
    """Write ``report`` as JSON to ``path`` (atomically), print the table ``text`` and, with ``readme``,
    put it in the README between the ``section`` markers."""
    from ecomnlp.artifact import write_json_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, report)
    print(text)
    if readme:
        write_readme_section(section, text)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall time in seconds (one decimal)."""
    started = time.perf_counter()
    result = fn()
    return result, round(time.perf_counter() - started, 1)


def ulb_file(path: str | None) -> str:
    """``path``, or else the ULB credit-card file in the cache (fetched first if missing: fetch_data.py ulb-fraud)."""
    if path is not None:
        return path
    from fetch_data import fetch

    return str(fetch("ulb-fraud"))


def fraud_arguments(data: str, out: str | Path, extra: Sequence[str] = ()) -> dict[str, Any]:
    """``train_fraud``'s keyword arguments: ``FRAUD_CONFIG`` with ``data`` as its training file, ``out``, no
    progress bar, then ``extra`` (command-line style overrides, e.g. ``["--network.trees", "0"]``)."""
    from ecomnlp.cli import command_arguments, train_fraud_command

    return command_arguments(train_fraud_command, FRAUD_CONFIG, ["--data.train", data, "--trainer.progress_bar",
                                                                 "false", "--out", str(out), *extra])


def tfidf_accuracy(args: dict[str, Any], train_limit: int | None) -> dict[str, Any]:
    """TF-IDF + LR on the rows a ``train_arguments`` run sees: same loader, same bad-row policy and,
    with ``train_limit``, the same seeded subset that ``data.max_train_examples`` picks."""
    import torch

    from ecomnlp.baselines import describe, tfidf_logits
    from ecomnlp.data import encode_targets, load_rows
    from ecomnlp.task import build_task
    from ecomnlp.training import cap_rows

    data, task = args["data"], build_task(args["task"], args["task_options"])
    started = time.perf_counter()
    train = load_rows(data.train, task, data.columns, data.on_bad_row)
    if train_limit and train_limit < len(train):
        train, _ = cap_rows(train, train_limit, args["trainer"].seed)  # the rows training keeps
    test = load_rows(data.test, task, data.columns, data.on_bad_row)
    task.fit(train.labels)
    label = data.columns.get("label", "label")
    test_targets = torch.tensor(encode_targets(test, task, label))
    logits = tfidf_logits(train.texts[0], encode_targets(train, task, label), test.texts[0], len(task.labels))
    accuracy = (logits.argmax(-1) == test_targets).float().mean().item()
    return {**describe(train.texts[0]), "accuracy": accuracy, "test_examples": len(test),
            "wall_time_s": round(time.perf_counter() - started, 1)}
