"""Shared fixtures: tiny random encoders (seconds to build), small CSV writers, a private cache."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Short texts whose characters the tiny tokenizer knows (it is trained on ecomnlp.models.tiny.SAMPLE_TEXTS).
POSITIVE = ["great coffee, fast shipping", "the shampoo smells lovely", "衣服质量不错，尺码合适",
            "手机电池很耐用，物流很快", "书的内容很好", "热水器安装师傅很专业"]
NEGATIVE = ["the blender broke after a week", "this tea tastes stale", "refund took too long",
            "酒店早餐很难吃", "平板屏幕有坏点", "the blender broke, refund took too long"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ddp: starts a 2-process DDP run on CPU in a subprocess (slow, ~1 min)")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterable[Path]:
    """Nothing writes ~/.cache/ecomnlp; subprocesses inherit the variable."""
    cache = tmp_path_factory.mktemp("ecomnlp_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECOMNLP_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ecomnlp.models.tiny import make_tiny_encoder

    return make_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder") / "model", seed=0)


@pytest.fixture(scope="session")
def other_tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture and tokenizer as ``tiny_encoder``, different random weights."""
    from ecomnlp.models.tiny import make_tiny_encoder

    return make_tiny_encoder(tmp_path_factory.mktemp("other_tiny_encoder") / "model", seed=1)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]], delimiter: str = ",",
              encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding=encoding, newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def sentiment_rows(repeat: int = 4) -> list[tuple[str, str, str]]:
    """(review, label, cat) rows: label 1/0 by polarity, cat 'en'/'zh' by script. 48 rows by default."""
    rows = []
    for _ in range(repeat):
        rows += [(t, "1", "中文" if not t.isascii() else "english") for t in POSITIVE]
        rows += [(t, "0", "中文" if not t.isascii() else "english") for t in NEGATIVE]
    return rows


@pytest.fixture
def csv_writer(tmp_path: Path) -> Callable[..., Path]:
    """``csv_writer(name, header, rows, delimiter=",")`` -> path under this test's tmp dir."""

    def write(name: str, header: Sequence[str], rows: Iterable[Sequence[object]], delimiter: str = ",") -> Path:
        return write_csv(tmp_path / name, header, rows, delimiter)

    return write


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 rows, columns review,label,cat: learnable by the tiny encoder in a few epochs."""
    return write_csv(tmp_path_factory.mktemp("sentiment") / "train.csv", ["review", "label", "cat"], sentiment_rows())


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def quick_train(task: str, train: Path, out: Path, model: Path, columns: dict[str, str] | None = None,
                task_options: dict | None = None, epochs: int = 3, **kwargs):
    """``ecomnlp.train`` with settings that finish in seconds on the tiny encoder; returns the summary."""
    import ecomnlp
    from ecomnlp.config import DataConfig, TrainerSettings

    data = DataConfig(**{"train": str(train), "columns": columns or {}, "batch_size": 8, **kwargs.pop("data", {})})
    trainer = TrainerSettings(**{"max_epochs": epochs, "lr": 1e-2, "progress_bar": False, "accelerator": "cpu",
                                 "devices": 1, "log_every_n_steps": 1, **kwargs.pop("trainer", {})})
    return ecomnlp.train(task, data, out=str(out), model=str(model), task_options=task_options, trainer=trainer,
                         **kwargs)
