"""The LiMBeR prefix with AAPE: CLIP image embedding -> soft tokens in a frozen LM's input space.

- LiMBeR's map: one linear layer from the normalised image embedding x [d] to k tokens [k, D].
- AAPE's prefix (method `aape`): h(x) (`aape.model.PromptGenerator`), normalised, through a
  second linear map to `aape_tokens` tokens, placed before (`prefix_position=before`, the
  paper's "prefix") or after the k image tokens.
- While training, the aggregator pools the image's own captions into p_a, the teacher of
  L_distill (`aape.model.PromptAggregator` without a per-class query, as in retrieval).

A sequence fed to the LM is a list of segments: an image (its prefix tokens) or a text, with or
without next-token loss; `build_inputs` embeds and pads a batch of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aape.model import PromptAggregator, PromptGenerator
from aape.vl.gen_config import GenConfig
from aape.vl.lm import FrozenLM

IGNORE = -100


@dataclass(frozen=True)
class ImageSeg:
    index: int  # row of the batch's prefix tensor


@dataclass(frozen=True)
class TextSeg:
    text: str
    loss: bool = False  # next-token loss on these tokens
    eos: bool = False  # the end-of-text token follows (with the same loss flag)
    max_tokens: int | None = None


Segment = ImageSeg | TextSeg


class PrefixModel(nn.Module):
    def __init__(self, clip_dim: int, lm_dim: int, cfg: GenConfig) -> None:
        super().__init__()
        self.k, self.lm_dim, self.position = cfg.k, lm_dim, cfg.prefix_position
        self.image_map = nn.Linear(clip_dim, cfg.k * lm_dim)
        self.uses_aape = cfg.method == "aape"
        self.aape_tokens = cfg.aape_tokens if self.uses_aape else 0
        if self.uses_aape:
            self.h = PromptGenerator(clip_dim)
            self.prefix_map = nn.Linear(clip_dim, cfg.aape_tokens * lm_dim)
            # The bank only gives d: the aggregator reads each image's own captions.
            shape = torch.zeros(1, 1, clip_dim)
            self.aggregator = PromptAggregator(
                cfg, shape, torch.ones(1, 1, dtype=torch.bool), per_class_query=False
            )

    @property
    def n_tokens(self) -> int:
        return self.k + self.aape_tokens

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prefix tokens [B, k (+ m), D] of image embeddings x [B, d], and h(x) (or None)."""
        x = F.normalize(x, dim=-1)
        tokens = self.image_map(x).view(len(x), self.k, self.lm_dim)
        if not self.uses_aape:
            return tokens, None
        h = self.h(x)
        p = self.prefix_map(F.normalize(h, dim=-1)).view(len(x), self.aape_tokens, self.lm_dim)
        both = (p, tokens) if self.position == "before" else (tokens, p)
        return torch.cat(both, dim=1), h

    def trainable(self, cfg: GenConfig) -> list[nn.Parameter]:
        """LiMBeR's map, and for AAPE the prefix map, the aggregator and h (unless frozen)."""
        params = list(self.image_map.parameters())
        if self.uses_aape:
            params += list(self.prefix_map.parameters()) + list(self.aggregator.parameters())
            if cfg.h_mode == "finetune":
                params += list(self.h.parameters())
            else:
                self.h.requires_grad_(False)
        return params


def _text_ids(lm: FrozenLM, seg: TextSeg) -> list[int]:
    ids = lm.ids(seg.text) if seg.text else []
    if seg.max_tokens is not None:
        ids = ids[: seg.max_tokens]
    return ids + ([lm.eos_id] if seg.eos else [])


def build_inputs(
    lm: FrozenLM,
    prefixes: torch.Tensor,
    sequences: list[list[Segment]],
    *,
    pad_left: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """inputs_embeds [B, T, D], attention_mask [B, T] and labels [B, T] (IGNORE where no loss)
    of the sequences; `prefixes` [n, k', D] holds the image tokens the ImageSegs index."""
    rows: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    width, device = prefixes.shape[1], prefixes.device
    for seq in sequences:
        parts, labs = [], []
        for seg in seq:
            if isinstance(seg, ImageSeg):
                parts.append(prefixes[seg.index])
                labs.append(torch.full((width,), IGNORE, dtype=torch.long, device=device))
                continue
            ids = torch.tensor(_text_ids(lm, seg), dtype=torch.long, device=device)
            if len(ids) == 0:
                continue
            parts.append(lm.embed(ids).to(prefixes.dtype))
            labs.append(ids if seg.loss else torch.full_like(ids, IGNORE))
        rows.append(torch.cat(parts))
        labels.append(torch.cat(labs))
    length = max(len(r) for r in rows)
    dim = prefixes.shape[-1]
    embeds = prefixes.new_zeros(len(rows), length, dim)
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
    target = torch.full((len(rows), length), IGNORE, dtype=torch.long, device=device)
    for i, (r, lab) in enumerate(zip(rows, labels, strict=True)):
        span = slice(length - len(r), length) if pad_left else slice(0, len(r))
        embeds[i, span] = r
        mask[i, span] = 1
        target[i, span] = lab
    return embeds, mask, target


def next_token_loss(lm: FrozenLM, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
    """The LM's mean next-token cross-entropy over the labelled positions (a scalar tensor)."""
    logits = lm.model(inputs_embeds=embeds, attention_mask=mask).logits
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE
    )
