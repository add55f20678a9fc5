"""Decoding from a prefix: greedy or beam search with a maximum length, through the frozen LM's
own `generate` (inputs_embeds, left-padded batches). A caption or answer ends at the
end-of-text token or a newline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from aape.vl.lm import FrozenLM

Decoding = Literal["greedy", "beam"]


@torch.no_grad()
def decode(
    lm: FrozenLM,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_new_tokens: int | Sequence[int],
    decoding: Decoding = "greedy",
    beams: int = 3,
) -> list[str]:
    """The generated texts of a left-padded batch; `max_new_tokens` per row cuts each output
    (VQA: the longest ground-truth answer)."""
    limits = (
        [max_new_tokens] * len(embeds) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    )
    stops = lm.stop_ids()
    out = lm.model.generate(
        inputs_embeds=embeds,
        attention_mask=mask,
        max_new_tokens=max(max(limits), 1),
        do_sample=False,
        num_beams=beams if decoding == "beam" else 1,
        eos_token_id=stops,
        pad_token_id=lm.pad_id,
    )
    texts = []
    for row, limit in zip(out.tolist(), limits, strict=True):
        kept: list[int] = []
        for token in row[:limit]:
            if token in stops:
                break
            kept.append(token)
        texts.append(lm.tokenizer.decode(kept, skip_special_tokens=True).strip())
    return texts
