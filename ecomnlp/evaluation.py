"""Evaluate a trained task on a labelled file: a metrics JSON and the task's figures."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch

from .artifact import write_json_atomic

_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei",
              "Source Han Sans SC", "SimHei", "AR PL UMing CN", "Droid Sans Fallback")


def font_for(labels: list[str]) -> str | None:
    """A font that can draw the labels, or None when a CJK label has no font here."""
    from matplotlib import font_manager

    if all(ord(c) < 0x2E80 for label in labels for c in label):
        return "DejaVu Sans"
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((f for f in _CJK_FONTS if f in installed), None)


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG next to ``path``, rename it into place, and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    pyplot().close(fig)
    tmp.replace(path)
    return path


def plot_confusion(matrix: torch.Tensor, labels: list[str], path: Path) -> Path:
    """Confusion matrix (rows true, columns predicted) as a PNG, written atomically.

    Labels a local font cannot draw (e.g. Chinese without a CJK font) are shown as their
    index; the metrics JSON lists the names in the same order.
    """
    plt = pyplot()
    font = font_for(labels)
    ticks = labels if font else [str(i) for i in range(len(labels))]
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 0.6 * n), max(3.5, 1.0 + 0.6 * n)), dpi=110)
    image = ax.imshow(matrix.numpy(), cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), ticks, rotation=45, ha="right", fontfamily=font or "DejaVu Sans")
    ax.set_yticks(range(n), ticks, fontfamily=font or "DejaVu Sans")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = matrix.max().item() or 1
    for i in range(n):
        for j in range(n):
            value = int(matrix[i, j])
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > peak / 2 else "black")
    ax.set_title("confusion matrix" + ("" if font else " (labels by index, see metrics.json)"))
    fig.tight_layout()
    return save_figure(fig, path)


def plot_lines(lines: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path, xlabel: str, ylabel: str,
               title: str, style: Literal["line", "steps", "points"] = "line", diagonal: bool = False) -> Path:
    """Curves of values in [0, 1] (``{label: (x, y)}``; a legend when there are several) as a PNG written
    atomically. ``style``: ``steps`` holds each value until the next x (a precision-recall curve); ``points``
    marks each point and puts the x ticks there (a metric at a few K). ``diagonal``: the dashed line y = x
    (chance, on a ROC curve)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.0), dpi=110)
    for label, (x, y) in lines.items():
        ax.plot(x, y, label=label, marker="o" if style == "points" else None,
                drawstyle="steps-post" if style == "steps" else "default")
        if style == "points":
            ax.set_xticks(list(x))
    if diagonal:
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def plot_bars(values: Mapping[str, float | None], path: Path, title: str) -> Path:
    """Rates in [0, 1] as labelled bars (None: no bar, marked "n/a"), as a PNG written atomically."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.0), dpi=110)
    names = list(values)
    heights = [values[n] or 0.0 for n in names]
    ax.bar(range(len(names)), heights, color="tab:blue")
    for i, n in enumerate(names):
        ax.text(i, heights[i] + 0.02, "n/a" if values[n] is None else f"{values[n]:.2f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set(title=title, ylim=(0, 1.1))
    fig.tight_layout()
    return save_figure(fig, path)


def labelled(trained: Any, data: str, columns: dict[str, str] | None, on_bad_row: str) -> tuple[Any, torch.Tensor]:
    """Checked rows of a labelled file and the task's targets; columns default to the training mapping."""
    from .data import encode_targets, load_rows

    mapping = trained.card.get("columns", {}) if columns is None else columns
    rows = load_rows(data, trained.task, mapping, on_bad_row)
    label_column = mapping.get(trained.task.schema.label, trained.task.schema.label)
    return rows, torch.tensor(encode_targets(rows, trained.task, label_column))


def evaluate_loaded(trained: Any, data: str, out: str, columns: dict[str, str] | None = None,
                    on_bad_row: str = "skip", batch_size: int = 64) -> tuple[dict[str, Any], Any, torch.Tensor]:
    """``evaluate`` for a task already in memory; also returns the checked test rows and targets."""
    started = time.perf_counter()
    rows, targets = labelled(trained, data, columns, on_bad_row)
    logits = trained.field_logits(rows.texts, batch_size)
    out_dir = Path(out)
    report = {
        "task": trained.card["task"], "data": str(data),
        **trained.task.evaluate(logits, targets, out_dir),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(out_dir / "metrics.json", report)
    return report, rows, targets


def evaluate(
    model: str,
    data: str,
    out: str,
    columns: dict[str, str] | None = None,
    on_bad_row: str = "skip",
    batch_size: int = 64,
) -> dict[str, Any]:
    """Score the task directory ``model`` on the labelled file ``data``; write ``out``/metrics.json.

    ``columns`` maps task fields to file columns; by default the mapping used in training.
    """
    from .predictor import load

    report, _, _ = evaluate_loaded(load(model), data, out, columns, on_bad_row, batch_size)
    return {"model": str(model), **report}
