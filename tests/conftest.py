"""Shared fixtures: tiny random encoders and causal LM (seconds to build), small CSV writers, a private cache;
builders of tiny fraud, recommendation and chat models."""
from __future__ import annotations

import csv
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable, Sequence

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

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


def import_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (the scripts folder is on ``sys.path`` only while importing)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPTS))


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


# --- tiny fraud, recommendation and chat models (built in seconds; also used by test_report.py) ---------------

FRAUD_FEATURES = {"numeric": {"x0": {}, "x1": {}, "amount": {"log": True}}, "categorical": {"country": {}}}
FRAUD_TAIL = 2.17  # P(N(0,1) > 2.17) ~ 1.5%


def fraud_records(n: int, seed: int = 0):
    """Frauds are exactly the rows with x0 > FRAUD_TAIL (~1.5%), and their note is a complaint; x1, amount and
    country are noise. One row per minute, so validation spans n / 1440 days."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=n)
    fraud = x0 > FRAUD_TAIL
    notes = np.where(fraud, rng.choice(NEGATIVE, n), rng.choice(POSITIVE, n))
    frame = pd.DataFrame({"minute": np.arange(n) * 60.0, "x0": x0, "x1": rng.normal(size=n),
                          "amount": np.exp(rng.normal(3, 1, n)), "country": rng.choice(["FR", "DE", "US"], n),
                          "note": notes, "label": fraud.astype(int)})
    frame.loc[::97, "x1"] = np.nan  # some missing values in training, so x1 gets a missing indicator
    return frame


def fit_tiny_fraud(tmp_path: Path, frame, features: dict = FRAUD_FEATURES, mode: str = "supervised",
                   detector: str | None = None, threshold=None, network=None, model: str = "minilm-l6",
                   epochs: int = 6, **data):
    """``fit_fraud`` on ``frame`` (written to ``tmp_path``/records.csv), temporal split with 20% test rows."""
    from ecomnlp.config import TrainerSettings
    from ecomnlp.tasks.fraud_detection import FraudData, NetworkSettings, ThresholdSettings, fit_fraud

    path = tmp_path / "records.csv"
    frame.to_csv(path, index=False)
    data = FraudData(train=str(path), time="minute", split="temporal", test_fraction=0.2, batch_size=128,
                     **data)
    if threshold is None:
        threshold = ThresholdSettings() if mode != "unsupervised" else ThresholdSettings("alert_rate", 0.02)
    trainer = TrainerSettings(max_epochs=epochs, lr=1e-2, progress_bar=False, accelerator="cpu", devices=1,
                              patience=10, log_every_n_steps=5, seed=0)
    return fit_fraud(data, features, mode, detector, model, network or NetworkSettings(hidden=[32, 16]),
                     threshold, trainer=trainer, work_dir=tmp_path / "run")


RECO_USERS, RECO_ITEMS = 40, 24
RECO_FEATURES = {"users": {"numeric": {"age": {}}, "categorical": {"job": {}}},
                 "items": {"numeric": {"year": {}}, "templates": {"text": "{title} {year}"}}}
RECO_COLUMNS = {"user": "uid", "item": "iid", "rating": "stars", "time": "ts"}


def reco_files(tmp: Path) -> dict[str, Path]:
    """Users 0-19 like items 0-11 (texts from POSITIVE), users 20-39 items 12-23 (texts from NEGATIVE)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for u in range(RECO_USERS):
        group = np.arange(12) if u < 20 else np.arange(12, 24)
        for t, i in enumerate(rng.choice(group, 8, replace=False)):
            rows.append((f"u{u}", f"i{i}", int(rng.integers(1, 6)), 1000 * u + t))
    paths = {"interactions": tmp / "inter.csv", "users": tmp / "users.csv", "items": tmp / "items.csv"}
    pd.DataFrame(rows, columns=["uid", "iid", "stars", "ts"]).to_csv(paths["interactions"], index=False)
    pd.DataFrame({"uid": [f"u{u}" for u in range(RECO_USERS)],
                  "age": [20 + u if u % 7 else None for u in range(RECO_USERS)],
                  "job": ["a" if u < 20 else "b" for u in range(RECO_USERS)]}).to_csv(paths["users"], index=False)
    texts = [POSITIVE[i % len(POSITIVE)] if i < 12 else NEGATIVE[i % len(NEGATIVE)] for i in range(RECO_ITEMS + 2)]
    pd.DataFrame({"iid": [f"i{i}" for i in range(RECO_ITEMS + 2)], "title": texts,
                  "year": [1990 + i if i % 5 else None for i in range(RECO_ITEMS + 2)]}
                 ).to_csv(paths["items"], index=False)
    return paths


def reco_trainer(epochs: int = 25):
    from ecomnlp.config import TrainerSettings

    return TrainerSettings(max_epochs=epochs, lr=1e-2, weight_decay=0.0, warmup_ratio=0.0, progress_bar=False,
                           accelerator="cpu", devices=1, patience=50, log_every_n_steps=5, seed=0)


def fit_tiny_reco(tmp: Path, encoder: Path):
    """A recommender with user and item features and item text through a LoRA adapter of ``encoder``, trained on
    ``reco_files(tmp)`` and saved to ``tmp``/task: (model, summary, the data files)."""
    from ecomnlp.tasks.recommendation import RecoData, RecoNetwork, fit_recommendation

    paths = reco_files(tmp)
    data = RecoData(**{k: str(v) for k, v in paths.items()}, columns=RECO_COLUMNS, batch_size=32, valid_fraction=0.15)
    network = RecoNetwork(dim=16, text_dim=8, history=5, negatives=4, loss="bce", text="adapter")
    model, summary = fit_recommendation(data, RECO_FEATURES, str(encoder), network, trainer=reco_trainer(),
                                        work_dir=tmp / "run", k=5)
    model.save(tmp / "task")
    return model, summary, paths


SUPPORT_KB = [
    {"id": "returns", "title": "Returns", "text": "Return any item within 30 days.", "key": "30 days"},
    {"id": "shipping", "title": "Shipping", "text": "Orders ship in 2 days.", "key": "2 days"},
    {"id": "refunds", "title": "Refunds", "text": "Refunds reach your card in 5 days.", "key": "5 days"},
    {"id": "tuihuo", "title": "退货", "text": "7天无理由退货。", "key": "7天无理由退货"},
]
SUPPORT_DIALOGUES = [
    {"messages": [{"role": "user", "content": "can I return a lamp?"},
                  {"role": "assistant", "content": "Yes, within 30 days."}], "kb": ["returns"]},
    {"messages": [{"role": "user", "content": "when does my order ship?"},
                  {"role": "assistant", "content": "Orders ship in 2 days."}], "kb": "shipping"},
    {"messages": [{"role": "user", "content": "where is my refund?"},
                  {"role": "assistant", "content": "It reaches your card in 5 days."},
                  {"role": "user", "content": "and returns?"},
                  {"role": "assistant", "content": "Within 30 days."}], "kb": ["refunds", "returns"]},
    {"messages": [{"role": "user", "content": "可以退货吗"}, {"role": "assistant", "content": "支持7天无理由退货。"}],
     "kb": ["tuihuo"]},
] * 3
SUPPORT_QUESTIONS = [{"question": "return window?", "kb": "returns"}, {"question": "shipping time?", "kb": "shipping"},
                     {"question": "what is the weather", "kb": None}, {"question": "tell me a joke", "kb": None}]


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random causal LM with a chat template (``ecomnlp.models.tiny``), 1024 positions."""
    from ecomnlp.models.tiny import make_tiny_causal_lm

    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm") / "model", context=1024)


def support_files(root: Path) -> dict[str, Path]:
    """kb.jsonl, train.jsonl and questions.jsonl of the tiny support store, under ``root``."""
    return {"kb": write_jsonl(root / "kb.jsonl", SUPPORT_KB),
            "train": write_jsonl(root / "train.jsonl", SUPPORT_DIALOGUES),
            "questions": write_jsonl(root / "questions.jsonl", SUPPORT_QUESTIONS)}


def train_tiny_chat(out: Path, lm: Path, encoder: Path, files: dict[str, Path]) -> dict:
    """``train_chat`` on ``support_files`` for 2 epochs (top 2 passages of 3 the LM re-ranks; replies by a 2-beam
    search), saved to ``out``; returns the summary."""
    from ecomnlp.chat_training import train_chat
    from ecomnlp.config import ChatDataConfig, GenerationSettings, RetrievalSettings, TrainerSettings

    data = ChatDataConfig(train=str(files["train"]), kb=str(files["kb"]), questions=str(files["questions"]),
                          top_k=2, batch_size=4, valid_fraction=0.25)
    trainer = TrainerSettings(max_epochs=2, lr=5e-3, progress_bar=False, accelerator="cpu", devices=1,
                              log_every_n_steps=1)
    return train_chat(data, str(out), model=str(lm), encoder=str(encoder), store="Test Shop", trainer=trainer,
                      retrieval=RetrievalSettings(rerank=3), generation=GenerationSettings(max_new_tokens=32, num_beams=2))
