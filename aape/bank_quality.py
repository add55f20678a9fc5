"""Is this bank any good? Scores of a prompt bank against a task's own few-shot images.

Nothing here trains or calls an LLM. Every number reads the bank (`ClassTexts.bank`, [C, n, d]
with its mask) and the task's cached image features:

* the margin of each description: its mean cosine to its own class's few-shot training images
  minus the best other class's. A negative margin means the text describes another class
  better than its own;
* zero-training proxies on the validation split: the bank's CuPL accuracy (the mean of each
  class's descriptions as the classifier) beside the template's zero-shot accuracy;
* the AUC of a score that should rank good descriptions above bad ones (used against the
  simulation's ground truth).

Margins use the training shots only, so pruning by them never sees a test image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aape.data import ClassTexts, FeatureSet, Task
from prompt_banks.errors import UserError

# Two descriptions of one class this close in CLIP's text space say the same thing.
NEAR_DUPLICATE_COSINE = 0.95


@dataclass
class Margins:
    """Per description slot of the bank: `margin` [C, n] (NaN where padded), `own` and `rival`
    the two terms, `rival_class` [C, n] the class the description fits best besides its own."""

    margin: torch.Tensor
    own: torch.Tensor
    rival: torch.Tensor
    rival_class: torch.Tensor
    mask: torch.Tensor

    def values(self, c: int) -> torch.Tensor:
        """The margins of class `c`'s real descriptions, in bank order."""
        return self.margin[c][self.mask[c]]


def class_image_means(train: FeatureSet, n_classes: int) -> torch.Tensor:
    """The mean of each class's training image embeddings [C, d] (not normalised: its dot product
    with a unit text is that text's mean cosine to the class's images)."""
    if len(train.labels) == 0:
        raise UserError("train split: no images; bank quality needs the few-shot training images")
    x = train.x.float()
    sums = torch.zeros(n_classes, x.shape[1]).index_add_(0, train.labels, x)
    counts = torch.bincount(train.labels, minlength=n_classes).float()
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise UserError(f"train split: classes {empty[:5]} have no image; give every class a shot")
    return sums / counts[:, None]


def description_margins(texts: ClassTexts, train: FeatureSet) -> Margins:
    """The margin of every description (see the module docstring)."""
    if texts.bank is None or texts.bank_mask is None:
        raise UserError("bank: the task has no prompt bank; pass --bank-domain")
    bank, mask = texts.bank.float(), texts.bank_mask
    n_classes = bank.shape[0]
    if n_classes < 2:
        raise UserError("classes: margins need at least two classes")
    if bank.shape[-1] != train.dim:
        raise UserError(
            f"bank: dimension {bank.shape[-1]} != the image features' {train.dim}; "
            "embed the bank and the images with the same CLIP"
        )
    means = class_image_means(train, n_classes)  # [C, d]
    sims = torch.einsum("cnd,kd->cnk", bank, means)  # [C, n, C]
    own = sims.diagonal(dim1=0, dim2=2).T  # [C, n]: sims[c, i, c]
    others = sims.clone()
    idx = torch.arange(n_classes)
    others[idx, :, idx] = float("-inf")
    rival, rival_class = others.max(-1)
    margin = torch.where(mask, own - rival, torch.full_like(own, float("nan")))
    return Margins(margin=margin, own=own, rival=rival, rival_class=rival_class, mask=mask)


def prune_bank(texts: ClassTexts, train: FeatureSet, threshold: float) -> ClassTexts:
    """`texts` keeping only the descriptions whose margin (on `train`, the shots) is above
    `threshold`; a class left with none keeps its best description, so no class loses its bank."""
    m = description_margins(texts, train)
    keep = m.mask & (m.margin > threshold)
    best = torch.nan_to_num(m.margin, nan=float("-inf")).argmax(1)
    keep[torch.arange(len(best)), best] |= ~keep.any(1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept slots first
    n_max = int(keep.sum(1).max())
    bank = torch.gather(texts.bank, 1, order[..., None].expand_as(texts.bank))[:, :n_max]
    new_mask = torch.gather(keep, 1, order)[:, :n_max]
    return ClassTexts(
        names=texts.names,
        templates=texts.templates,
        bank=bank * new_mask[..., None],
        bank_mask=new_mask,
    )


def _accuracy(x: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> float:
    return float(((x.float() @ weights.T).argmax(1) == labels).float().mean()) if len(x) else 0.0


def zero_training_proxies(task: Task) -> dict[str, float]:
    """CuPL's accuracy with this bank and the template's zero-shot accuracy on the validation
    split (the test split where a task has no validation images)."""
    split = task.val if len(task.val.labels) else task.test
    texts = task.texts
    if texts.bank is None or texts.bank_mask is None:
        raise UserError("bank: the task has no prompt bank; pass --bank-domain")
    m = texts.bank_mask[..., None].float()
    means = F.normalize((texts.bank.float() * m).sum(1) / m.sum(1).clamp_min(1), dim=-1)
    return {
        "split": "val" if len(task.val.labels) else "test",
        "n_images": int(split.n_images),
        "cupl_acc": _accuracy(split.x, split.labels, means),
        "zeroshot_acc": _accuracy(
            split.x, split.labels, F.normalize(texts.templates.float(), dim=-1)
        ),
    }


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The probability that a random positive scores above a random negative (ties count half):
    the Mann-Whitney form of the ROC AUC."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auc needs at least one positive and one negative")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def class_summary(
    margins: Margins,
    names: list[str],
    texts: dict[str, list[str]] | None = None,
    *,
    near_dups: list[int] | None = None,
    show: int = 2,
) -> list[dict[str, Any]]:
    """Per class: how many descriptions, the share with a negative margin, the median margin,
    and the best and worst descriptions (their text where `texts` maps a class to its bank's
    texts in bank order, else their slot number)."""
    rows = []
    for c, name in enumerate(names):
        vals = margins.values(c)
        if len(vals) == 0:
            continue
        rivals = margins.rival_class[c][margins.mask[c]]
        labels = (texts or {}).get(name)

        def shown(i: int, vals: torch.Tensor = vals, rivals: torch.Tensor = rivals,
                  labels: list[str] | None = labels) -> dict[str, Any]:  # fmt: skip
            text = labels[i] if labels is not None and i < len(labels) else f"description #{i}"
            best_other = names[int(rivals[i])]
            return {"text": text, "margin": float(vals[i]), "fits_best_besides_own": best_other}

        order = torch.argsort(vals, descending=True).tolist()
        rows.append(
            {
                "class": name,
                "n": len(vals),
                "negative_share": float((vals < 0).float().mean()),
                "median_margin": float(vals.median()),
                "near_duplicates": near_dups[c] if near_dups is not None else None,
                "best": [shown(i) for i in order[:show]],
                "worst": [shown(i) for i in order[::-1][:show]],
            }
        )
    return rows


def quality(task: Task, texts: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The whole bank-quality summary of `task` as JSON-able data."""
    margins = description_margins(task.texts, task.train)
    vals = margins.margin[margins.mask]
    dups = near_duplicates(task.texts)
    per_class = class_summary(margins, task.texts.names, texts, near_dups=dups)
    return {
        "task": task.name,
        "model_id": task.model_id,
        "n_descriptions": len(vals),
        "near_duplicates": {"cosine_at_least": NEAR_DUPLICATE_COSINE, "count": int(sum(dups))},
        "margin": {
            "median": float(vals.median()),
            "mean": float(vals.mean()),
            "negative_share": float((vals < 0).float().mean()),
            "quantiles": {
                q: float(torch.quantile(vals, float(q))) for q in ("0.05", "0.25", "0.75", "0.95")
            },
        },
        "proxies": zero_training_proxies(task),
        "per_class": per_class,
    }


def near_duplicates(texts: ClassTexts, threshold: float = NEAR_DUPLICATE_COSINE) -> list[int]:
    """Per class, how many of its descriptions have an earlier one at cosine >= `threshold`
    (the same sentence reworded; exact repeats are already gone from the bank)."""
    if texts.bank is None or texts.bank_mask is None:
        raise UserError("bank: the task has no prompt bank; pass --bank-domain")
    out = []
    for c in range(texts.bank.shape[0]):
        p = F.normalize(texts.bank[c][texts.bank_mask[c]].float(), dim=-1)
        sims = torch.triu(p @ p.T, diagonal=1)
        out.append(int((sims >= threshold).any(0).sum()))
    return out


def with_bank_of(texts: ClassTexts, source: ClassTexts) -> ClassTexts:
    """`texts` whose classes that `source` also names take `source`'s bank rows (a pruned bank);
    the others keep theirs."""
    if texts.bank is None or texts.bank_mask is None or source.bank is None:
        return texts
    index = {n: i for i, n in enumerate(source.names)}
    rows = [
        (source.bank[index[n]], source.bank_mask[index[n]]) if n in index else (b, m)
        for n, b, m in zip(texts.names, texts.bank, texts.bank_mask, strict=True)
    ]
    n_max = max(len(m) for _, m in rows)
    bank = torch.zeros(len(rows), n_max, texts.bank.shape[-1], dtype=texts.bank.dtype)
    mask = torch.zeros(len(rows), n_max, dtype=torch.bool)
    for i, (b, m) in enumerate(rows):
        bank[i, : len(m)], mask[i, : len(m)] = b, m
    return ClassTexts(names=texts.names, templates=texts.templates, bank=bank, bank_mask=mask)


class PrunedClassifier:
    """A classifier trained on a pruned bank scores its training classes with that bank, and
    classes it has no shots of (new classes) with their bank as given."""

    def __init__(self, inner: Any, pruned: ClassTexts) -> None:
        self.inner = inner
        self.pruned = pruned

    def logits(self, x: torch.Tensor, texts: ClassTexts) -> torch.Tensor:
        return self.inner.logits(x, with_bank_of(texts, self.pruned))
