"""AAPE for retrieval: the generator h and, while training, the aggregator over an image's own
captions. No head g: the query of an image is norm(h(x)) (or norm(x + h(x)), `query`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aape.model import PromptAggregator, PromptGenerator
from aape.vl.config import RetrievalConfig


class RetrievalAAPE(nn.Module):
    def __init__(
        self, dim: int, cfg: RetrievalConfig, bank: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.dim = dim
        self.query_kind = cfg.query
        self.h = PromptGenerator(dim)
        self.aggregator = (
            PromptAggregator(cfg, bank, mask, per_class_query=False) if bank is not None else None
        )

    def query(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """The retrieval query of normalised image embeddings x [B, d]: unit vectors [B, d]."""
        h = self.h(x) if h is None else h
        return F.normalize(h if self.query_kind == "h" else x + h, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.query(F.normalize(x, dim=-1))

    def inference_state(self) -> dict[str, torch.Tensor]:
        """The weights an artifact carries: h only."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("h.")}
