"""Baselines in the same harness: zero-shot CLIP, CuPL, and a linear probe on cached features.

Every classifier here and the trained AAPE answer `logits(x, texts) -> [N, C]` for the classes of
`texts`, so evaluation treats them alike. (AAPE without L_distill is just `lambda_distill=0`.)
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from aape.config import TrainConfig
from aape.data import ClassTexts, FeatureSet
from aape.model import class_embeddings
from prompt_banks.clip import resolve_device
from prompt_banks.errors import UserError


class Classifier(Protocol):
    def logits(self, x: torch.Tensor, texts: ClassTexts) -> torch.Tensor: ...


class TextClassifier:
    """Zero-shot CLIP (`template`: "a photo of a {c}.") or CuPL (`bank_mean`): x . w_c / tau."""

    def __init__(self, kind: str, tau: float) -> None:
        self.kind = kind
        self.tau = tau

    def logits(self, x: torch.Tensor, texts: ClassTexts) -> torch.Tensor:
        if self.kind != "template" and texts.bank is None:
            raise UserError("method cupl: the task has no prompt bank; pass a bank domain")
        w = class_embeddings(texts, self.kind).to(x.device)
        return F.normalize(x, dim=-1) @ w.T / self.tau


class LinearProbe(nn.Module):
    """Logistic regression on the cached features; knows only its training classes."""

    def __init__(self, dim: int, class_names: list[str]) -> None:
        super().__init__()
        self.class_names = list(class_names)
        self.linear = nn.Linear(dim, len(class_names))

    def logits(self, x: torch.Tensor, texts: ClassTexts) -> torch.Tensor:
        if texts.names != self.class_names:
            raise UserError(
                "method linear_probe: it can only score the classes it was trained on; "
                "evaluate it on the training classes only"
            )
        return self.linear(F.normalize(x, dim=-1))


def train_linear_probe(train: FeatureSet, texts: ClassTexts, cfg: TrainConfig) -> LinearProbe:
    """Full-batch AdamW on every cached view, seeded; initialised at zero-shot CLIP's weights."""
    device = resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        probe = LinearProbe(train.dim, texts.names)
    with (
        torch.no_grad()
    ):  # start from the zero-shot classifier so few shots cannot do worse by much
        probe.linear.weight.copy_(class_embeddings(texts, "template") / cfg.tau)
        probe.linear.bias.zero_()
    probe.to(device)
    x, y = F.normalize(train.x, dim=-1).to(device), train.labels.to(device)
    opt = torch.optim.AdamW(
        probe.parameters(), lr=cfg.probe_lr, weight_decay=cfg.probe_weight_decay
    )
    for _ in range(cfg.probe_steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(probe.linear(x), y).backward()
        opt.step()
    return probe.cpu()
