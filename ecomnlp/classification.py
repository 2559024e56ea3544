"""Text classification shared by the classification-style tasks: single-label, multi-label
and ordinal (star ratings). Tasks in ``tasks/`` configure it; none re-implements it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics import classification as tmc
from torchmetrics.wrappers import LambdaInputTransformer

from .task import Schema


def label_text(value: Any) -> str:
    """Labels are compared as text: 1, "1" and " 1 " are the same label."""
    if isinstance(value, (list, tuple, dict)):
        raise ValueError(f"a label is one value, got {value!r} (a list of labels needs multi_label: true)")
    return str(value).strip()


@dataclass
class TextClassification:
    """Classify one text (or a text pair) into a label vocabulary fitted on training rows."""

    schema: ClassVar[Schema] = Schema(text=("text",), label="label")

    labels: list[str] = field(default_factory=list)
    multi_label: bool = False
    label_separator: str = "|"
    threshold: float = 0.5
    ordinal: bool = False

    @property
    def monitor(self) -> str:
        return "f1_macro" if self.multi_label else "accuracy"

    def _split(self, value: Any) -> list[str]:
        """A row's labels: a list of them (JSONL) or one text joined by ``label_separator``."""
        values = value if isinstance(value, (list, tuple)) else label_text(value).split(self.label_separator)
        parts = [label_text(p) for p in values]
        return [p for p in parts if p]

    def _label(self, value: Any) -> str:
        """One label as text; an ordinal one as its number (4, "4" and "4.0" are one star rating)."""
        text = label_text(value)
        if not self.ordinal:
            return text
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"ordinal labels must be numbers (e.g. 1-5 stars), got {text!r}") from None
        return str(int(number)) if number.is_integer() else repr(number)

    def fit(self, labels: Sequence[Any]) -> None:
        seen = {p for v in labels for p in self._split(v)} if self.multi_label else {self._label(v) for v in labels}
        self.labels = sorted(seen, key=float) if self.ordinal else sorted(seen)
        if len(self.labels) < 2:
            raise ValueError(f"need at least 2 distinct labels in training data, found {self.labels}")

    def _index(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise ValueError(f"label '{label}' was not seen in training (known: {self.labels})") from None

    def encode_target(self, value: Any) -> int | list[float]:
        if not self.multi_label:
            return self._index(self._label(value))
        target = [0.0] * len(self.labels)
        for part in self._split(value):
            target[self._index(part)] = 1.0
        return target

    def build_head(self, hidden_size: int) -> nn.Module:
        return nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden_size, len(self.labels)))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return nn.functional.binary_cross_entropy_with_logits(logits, targets.float())
        return nn.functional.cross_entropy(logits, targets)

    def metrics(self) -> MetricCollection:
        n = len(self.labels)
        if self.multi_label:  # fed probabilities: torchmetrics takes logits that all lie in [0, 1] for probabilities

            def on_probabilities(metric: Any) -> Any:
                return LambdaInputTransformer(metric, transform_pred=torch.sigmoid)

            return MetricCollection({
                "accuracy": on_probabilities(tmc.MultilabelExactMatch(num_labels=n, threshold=self.threshold)),
                "f1_macro": on_probabilities(tmc.MultilabelF1Score(num_labels=n, average="macro",
                                                                   threshold=self.threshold)),
                "f1_micro": on_probabilities(tmc.MultilabelF1Score(num_labels=n, average="micro",
                                                                   threshold=self.threshold)),
            })
        return MetricCollection({
            "accuracy": tmc.MulticlassAccuracy(num_classes=n, average="micro"),
            "f1_macro": tmc.MulticlassF1Score(num_classes=n, average="macro"),
        })

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid() if self.multi_label else logits.softmax(-1)

    def decode(self, logits: torch.Tensor) -> list[dict[str, Any]]:
        probs = self.probabilities(logits.float()).tolist()
        rows = []
        for p in probs:
            by_label = dict(zip(self.labels, p))
            if self.multi_label:
                rows.append({"labels": [l for l, q in by_label.items() if q >= self.threshold], "probabilities": by_label})
                continue
            best = max(range(len(p)), key=p.__getitem__)
            row = {"label": self.labels[best], "probability": p[best], "probabilities": by_label}
            if self.ordinal:
                row["expected"] = sum(float(l) * q for l, q in by_label.items())
            rows.append(row)
        return rows

    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor, out_dir: Path) -> dict[str, Any]:
        from .evaluation import plot_confusion

        n = len(self.labels)
        report: dict[str, Any] = {k: v.item() for k, v in self.metrics()(logits, targets).items()}
        report["examples"] = len(targets)
        per = "Multilabel" if self.multi_label else "Multiclass"
        kw = {"num_labels": n, "threshold": self.threshold} if self.multi_label else {"num_classes": n}
        scores = self.probabilities(logits) if self.multi_label else logits  # as metrics(): probabilities
        precision = getattr(tmc, f"{per}Precision")(average=None, **kw)(scores, targets)
        recall = getattr(tmc, f"{per}Recall")(average=None, **kw)(scores, targets)
        f1 = getattr(tmc, f"{per}F1Score")(average=None, **kw)(scores, targets)
        support = targets.sum(0) if self.multi_label else torch.bincount(targets, minlength=n)
        report["per_class"] = {
            label: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
                    "support": int(support[i])}
            for i, label in enumerate(self.labels)
        }
        if not self.multi_label:
            matrix = tmc.MulticlassConfusionMatrix(num_classes=n)(logits, targets)
            report["confusion_matrix"] = {"labels": self.labels, "rows_true_cols_predicted": matrix.tolist()}
            report["figures"] = [plot_confusion(matrix, self.labels, out_dir / "confusion_matrix.png").name]
            if self.ordinal:
                values = torch.tensor([float(l) for l in self.labels])
                report["mae"] = (values[logits.argmax(-1)] - values[targets]).abs().mean().item()
        return report
