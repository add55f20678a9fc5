"""What training and evaluation consume: tensors of frozen-CLIP embeddings, nothing else.

Every producer (cached features from a dataset + a bank from the store, bring-your-own feature
files, the CLIP-like simulation) builds a `Task`; every consumer (training, baselines, evaluation)
reads one. All embeddings are L2-normalised float32 on the CPU; consumers move them to a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class FeatureSet:
    """Image features of one split. A training image may have several augmented views: one row
    per (image, view), `image_index` groups the rows of one image."""

    x: torch.Tensor  # [N, d] float32, L2-normalised CLIP image embeddings
    labels: torch.Tensor  # [N] int64, index into ClassTexts.names
    image_index: torch.Tensor  # [N] int64, 0..n_images-1, same value for views of one image
    view: torch.Tensor  # [N] int64, 0 = the centre crop / only view
    image_ids: list[str] = field(default_factory=list)  # [n_images] stable ids (path or hash)

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        for name in ("labels", "image_index", "view"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"FeatureSet.{name} must have shape ({n},)")

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    @property
    def n_images(self) -> int:
        return int(self.image_index.max().item()) + 1 if len(self.image_index) else 0

    def subset_classes(self, keep: list[int]) -> FeatureSet:
        """Rows whose label is in `keep`, relabelled to positions in `keep` (base/new splits)."""
        remap = torch.full((int(self.labels.max().item()) + 1 if len(self.labels) else 0,), -1)
        remap[torch.tensor(keep, dtype=torch.long)] = torch.arange(len(keep))
        mask = remap[self.labels] >= 0
        old_images = self.image_index[mask]
        uniq, new_index = torch.unique(old_images, return_inverse=True)
        ids = [self.image_ids[i] for i in uniq.tolist()] if self.image_ids else []
        return FeatureSet(
            x=self.x[mask],
            labels=remap[self.labels[mask]],
            image_index=new_index,
            view=self.view[mask],
            image_ids=ids,
        )


@dataclass(frozen=True)
class BankId:
    """Which prompt bank a `ClassTexts.bank` was read from: the store domain and a fingerprint
    of the rows read (`prompt_banks.fingerprint.bank_fingerprint`)."""

    domain: str
    fingerprint: str


@dataclass
class ClassTexts:
    """Text side of the classes: names, template embeddings w_c and the prompt bank P_c."""

    names: list[str]
    templates: torch.Tensor  # [C, d] "a photo of a {c}." embeddings, L2-normalised
    bank: torch.Tensor | None = None  # [C, n_max, d] prompt embeddings, zero-padded
    bank_mask: torch.Tensor | None = None  # [C, n_max] bool, True where a prompt exists
    bank_id: BankId | None = None  # where `bank` came from, when it came from a store

    def __post_init__(self) -> None:
        c = len(self.names)
        if self.templates.shape[0] != c:
            raise ValueError(
                f"ClassTexts.templates has {self.templates.shape[0]} rows for {c} names"
            )
        if (self.bank is None) != (self.bank_mask is None):
            raise ValueError("ClassTexts.bank and bank_mask go together")
        if self.bank is not None and self.bank.shape[:2] != self.bank_mask.shape:  # type: ignore[union-attr]
            raise ValueError("ClassTexts.bank_mask must have shape bank.shape[:2]")

    @property
    def dim(self) -> int:
        return int(self.templates.shape[1])

    def bank_mean(self) -> torch.Tensor:
        """Normalised mean of each class's prompts (CuPL's class embedding), [C, d]."""
        if self.bank is None or self.bank_mask is None:
            raise ValueError("ClassTexts has no bank")
        m = self.bank_mask.unsqueeze(-1).to(self.bank.dtype)
        mean = (self.bank * m).sum(1) / m.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(mean, dim=-1)

    def subset(self, keep: list[int]) -> ClassTexts:
        idx = torch.tensor(keep, dtype=torch.long)
        return ClassTexts(
            names=[self.names[i] for i in keep],
            templates=self.templates[idx],
            bank=None if self.bank is None else self.bank[idx],
            bank_mask=None if self.bank_mask is None else self.bank_mask[idx],
            bank_id=self.bank_id,
        )


@dataclass
class Task:
    """One few-shot problem: the classes, their texts, and features per split."""

    name: str  # e.g. "textile-defects" or "sim-fine"; used in run directory names
    texts: ClassTexts
    train: FeatureSet
    test: FeatureSet
    val: FeatureSet | None = None
    model_id: str = ""  # CLIP model id that produced every embedding here
    # What the task was built from, for the run record (images used per split, shots policy, ...)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test", "val"):
            fs = getattr(self, split)
            if fs is not None and fs.dim != self.texts.dim:
                raise ValueError(
                    f"Task {self.name}: {split} features have d={fs.dim}, texts d={self.texts.dim}"
                )
