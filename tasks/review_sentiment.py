"""Review sentiment: review text -> polarity (``binary``) or a star rating (``stars``).

``stars`` treats the labels as ordered numbers (e.g. 1-5): predictions carry the expected
rating and the report adds the mean absolute error in stars.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

from ecomnlp.classification import TextClassification
from ecomnlp.task import register_task


@register_task
@dataclass
class ReviewSentiment(TextClassification):
    """Review text -> polarity (binary) or star rating (stars, ordinal)."""

    name: ClassVar[str] = "review_sentiment"

    mode: Literal["binary", "stars"] = "binary"

    def __post_init__(self) -> None:
        if self.mode not in ("binary", "stars"):
            raise ValueError(f"review_sentiment mode must be 'binary' or 'stars', not '{self.mode}'")
        if self.multi_label:
            raise ValueError("review_sentiment is single-label")
        self.ordinal = self.mode == "stars"

    def fit(self, labels: Sequence[Any]) -> None:
        super().fit(labels)
        if self.mode == "binary" and len(self.labels) != 2:
            raise ValueError(f"binary sentiment needs exactly 2 labels, training data has {self.labels}")
