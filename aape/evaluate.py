"""Metrics with CLIP_benchmark keys (acc1, acc5, mean_per_class_recall) and CoCoOp base/new/H."""

from __future__ import annotations

import math
from typing import Any

import torch

from aape.baselines import Classifier
from aape.data import ClassTexts, FeatureSet, Task


def accuracy_topk(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return float((top == labels.unsqueeze(1)).any(1).float().mean())


def per_class_recall(pred: torch.Tensor, labels: torch.Tensor, n_classes: int) -> list[float]:
    """Recall of each class; NaN for a class with no test image."""
    hits = torch.zeros(n_classes).index_add_(0, labels, (pred == labels).float())
    counts = torch.bincount(labels, minlength=n_classes).float()
    return [float(h / c) if c > 0 else float("nan") for h, c in zip(hits, counts, strict=True)]


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """acc1, acc5, mean_per_class_recall (CLIP_benchmark style) + the per-class recalls."""
    n_classes = logits.shape[1]
    recalls = per_class_recall(logits.argmax(1), labels, n_classes)
    present = [r for r in recalls if not math.isnan(r)]
    return {
        "acc1": accuracy_topk(logits, labels, 1),
        "acc5": accuracy_topk(logits, labels, 5),
        "mean_per_class_recall": sum(present) / len(present) if present else float("nan"),
        "per_class_recall": recalls,
        "n_images": len(labels),
    }


def eval_view(features: FeatureSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Test rows: the centre-crop view (view 0) of every image."""
    keep = features.view == 0
    return features.x[keep], features.labels[keep]


@torch.no_grad()
def predict_logits(
    clf: Classifier, x: torch.Tensor, texts: ClassTexts, chunk: int = 4096
) -> torch.Tensor:
    parts = [clf.logits(x[i : i + chunk], texts).float().cpu() for i in range(0, len(x), chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, len(texts.names))


def evaluate(clf: Classifier, features: FeatureSet, texts: ClassTexts) -> dict[str, Any]:
    x, y = eval_view(features)
    return classification_metrics(predict_logits(clf, x, texts), y)


def base_new_classes(n_classes: int) -> tuple[list[int], list[int]]:
    """CoCoOp's split: classes sorted by label, base = the first ceil(C/2), new = the rest."""
    n_base = math.ceil(n_classes / 2)
    return list(range(n_base)), list(range(n_base, n_classes))


def subset_task(task: Task, keep: list[int], suffix: str) -> Task:
    return Task(
        name=f"{task.name}-{suffix}",
        texts=task.texts.subset(keep),
        train=task.train.subset_classes(keep),
        test=task.test.subset_classes(keep),
        val=None if task.val is None else task.val.subset_classes(keep),
        model_id=task.model_id,
    )


def harmonic_mean(base: float, new: float) -> float:
    if math.isnan(base) or math.isnan(new) or base + new == 0:
        return float("nan")
    return 2 * base * new / (base + new)


def average_row(rows: list[dict[str, float]]) -> dict[str, float]:
    """The paper's "Average": H of the mean base and the mean new accuracy (not mean of H)."""
    base = sum(r["base"] for r in rows) / len(rows)
    new = sum(r["new"] for r in rows) / len(rows)
    return {"base": base, "new": new, "H": harmonic_mean(base, new)}
