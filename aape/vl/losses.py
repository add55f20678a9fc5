"""L_task for retrieval: CLIP's contrastive loss between image queries and caption embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aape.vl.config import Direction


def contrastive_loss(
    logits: torch.Tensor, owner: torch.Tensor, direction: Direction = "symmetric"
) -> torch.Tensor:
    """In-batch contrastive loss. `logits` [B, M]: image i against text j (already / tau);
    `owner` [M]: the image of text j (every image owns at least one text).

    image->text: -log of the softmax mass on the image's own texts (with one text per image,
    CLIP's cross-entropy); text->image: cross-entropy of each text over the batch's images.
    `symmetric` is their mean, as CLIP."""
    losses = []
    if direction in ("symmetric", "i2t"):
        own = owner.unsqueeze(0) == torch.arange(len(logits), device=logits.device).unsqueeze(1)
        positive = logits.masked_fill(~own, float("-inf")).logsumexp(1)
        losses.append((logits.logsumexp(1) - positive).mean())
    if direction in ("symmetric", "t2i"):
        losses.append(F.cross_entropy(logits.T, owner))
    return torch.stack(losses).mean()
