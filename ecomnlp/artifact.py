"""A trained task on disk: one directory, written atomically.

    adapter_config.json, adapter_model.safetensors   the LoRA adapter, in peft's own format
    head.safetensors                                  the task head (not for chat models)
    card.json                                         task, labels, base model + checksum, schema, metrics
    lexical.json, lexical.safetensors                 classifiers with a lexical part (ecomnlp/lexical.py)
    members/<i>/ (adapter files, head.safetensors)    an ensemble's members after the first (ecomnlp/ensemble.py)
    kb.jsonl                                          chat models: the knowledge base they were trained on
    features.json, model.safetensors                  fraud tasks: the feature pipeline and the scorer's weights
                                                      (the adapter only when the task has text fields)
    item_features.json, catalogue.safetensors,        recommendation / search ranking: the item pipeline, the cached
    model.safetensors (user_features.json,            item vectors (ids in its metadata), the towers' weights (users'
    users.safetensors)                                features and histories); the adapter only when one trained
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

CARD = "card.json"
HEAD = "head.safetensors"
FORMAT_VERSION = 1
CHAT_KIND = "chat"  # card["kind"] of a causal-LM chat model; encoder tasks have no "kind"
FRAUD_KIND = "fraud"  # card["kind"] of a fraud-detection task (tasks/fraud_detection.py)
RECO_KIND = "recommendation"  # card["kind"] of a recommender (tasks/recommendation.py)
SEARCH_KIND = "search_ranking"  # card["kind"] of a search ranker (tasks/search_ranking.py)
FEATURES = "features.json"
MODEL_WEIGHTS = "model.safetensors"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ArtifactError(ValueError):
    """A task directory that is missing, incomplete, or made for another base model."""


@lru_cache(maxsize=8)
def _checksum(base_dir: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in stamp:
        digest.update(name.encode())
        with open(Path(base_dir) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def base_checksum(base_dir: str | Path) -> str:
    """sha256 over the base model's config and weight files (cached per file size and mtime)."""
    base = Path(base_dir)
    files = sorted(
        p for p in base.iterdir()
        if p.name == "config.json" or p.suffix in (".safetensors", ".bin") and not p.name.startswith("adapter")
    )
    return _checksum(str(base), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text next to ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp files are private
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON next to ``path`` and rename it into place."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished temporary directory to ``out``, replacing any previous one.

    Temporary files are private (0600/0700); the result gets the usual permissions (umask).
    """
    mask = _umask()
    for path in tmp.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
    tmp.chmod(0o777 & ~mask)
    if out.exists() and _exchange(tmp, out):  # one atomic step: out is the old version or the new one, never absent
        shutil.rmtree(tmp)  # now the old version
        return
    old = None
    if out.exists():  # two steps where the system cannot swap: a crash between them leaves the old version in `old`
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where that is unavailable."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """A temporary directory beside ``out`` to fill; it replaces ``out`` when the block ends without error."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_card(directory: Path, card: dict[str, Any]) -> None:
    (directory / CARD).write_text(json.dumps({"format_version": FORMAT_VERSION, **card}, indent=2, ensure_ascii=False),
                                  encoding="utf-8")


def save_artifact(out: str | Path, backbone: Any, adapter: str, head: Any, card: dict[str, Any],
                  lexical: Any = None, members: Sequence[tuple[str, Any]] = ()) -> Path:
    """Write the task directory ``out`` atomically: readers see the old one or the new one.
    ``lexical``: a classifier's lexical part (``ecomnlp.lexical.Lexical``), or None; ``members``: an ensemble's
    other (adapter, head) pairs, written where ``member_dirs`` of ``card`` expects them."""
    from safetensors.torch import save_file

    folders = member_dirs(card)
    if len(folders) != len(members):
        raise ValueError(f"the card describes {len(folders)} more ensemble members, {len(members)} were given")
    with atomic_dir(out) as tmp:
        for (name, module), folder in [((adapter, head), "."), *zip(members, folders)]:
            backbone.save_adapter(name, tmp / folder)
            save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp / folder / HEAD))
        if lexical is not None:
            from .lexical import save_lexical

            save_lexical(lexical, tmp)
        write_card(tmp, card)
    return Path(out)


def read_card(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    card_path = path / CARD
    if not card_path.exists():
        raise ArtifactError(f"{path} is not a trained task directory (no {CARD})")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    if card.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{card_path}: unsupported format_version {card.get('format_version')}")
    for f in required_files(card):
        if not (path / f).exists():
            raise ArtifactError(f"{path} is incomplete: {f} is missing")
    return card


def required_files(card: dict[str, Any]) -> tuple[str, ...]:
    """The files a directory with this card must hold, besides the card."""
    kind = card.get("kind")
    if kind == CHAT_KIND:  # a chat model's LM head is the base model's own
        return ADAPTER_FILES
    if kind == FRAUD_KIND:  # a text-free fraud task has no encoder, so no adapter
        return (FEATURES, MODEL_WEIGHTS, *(ADAPTER_FILES if card.get("base_model") else ()))
    if kind in (RECO_KIND, SEARCH_KIND):  # the adapter only when the item (and query) texts trained one
        adapter = ADAPTER_FILES if card.get("lora") else ()
        users = ("user_features.json", "users.safetensors") if kind == RECO_KIND else ()
        return ("item_features.json", MODEL_WEIGHTS, "catalogue.safetensors", *users, *adapter)
    members = tuple(f"{folder}/{f}" for folder in member_dirs(card) for f in (*ADAPTER_FILES, HEAD))
    if card.get("lexical"):
        from .lexical import LEXICAL_FILES

        return (*ADAPTER_FILES, HEAD, *LEXICAL_FILES, *members)
    return (*ADAPTER_FILES, HEAD, *members)


def member_dirs(card: dict[str, Any]) -> list[str]:
    """The folders of an ensemble's members after the first (which is the directory itself); none for one adapter."""
    return [f"members/{i}" for i in range(1, len(card.get("ensemble", {}).get("members", [])))]


def check_base(card: dict[str, Any], path: str | Path, base_dir: str | Path) -> None:
    """Refuse an adapter trained on another base model."""
    expected = card["base_model"]["checksum"]
    actual = base_checksum(base_dir)
    if actual != expected:
        raise ArtifactError(
            f"{path} was trained on base model '{card['base_model']['name']}' (sha256 {expected[:12]}…) "
            f"but the loaded base {base_dir} has sha256 {actual[:12]}…; load it on its own base"
        )
