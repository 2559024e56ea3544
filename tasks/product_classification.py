"""Product classification: product text (title, description or review) -> category.

Single-label by default; ``multi_label: true`` reads labels joined by ``label_separator``
(e.g. ``kitchen|gifts``) and predicts every label whose probability passes ``threshold``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ecomnlp.classification import TextClassification
from ecomnlp.task import register_task


@register_task
@dataclass
class ProductClassification(TextClassification):
    """Product text (title, description, review) -> category; single- or multi-label."""

    name: ClassVar[str] = "product_classification"
