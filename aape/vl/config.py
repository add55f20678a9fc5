"""Retrieval training configuration: the method's `TrainConfig` plus the switches of the
decisions the paper leaves open for image-text retrieval (docs/retrieval.md names each)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from aape.config import TrainConfig, load_config

CaptionPairing = Literal["sampled", "all", "mean"]
Direction = Literal["symmetric", "i2t", "t2i"]
Query = Literal["h", "residual"]


class RetrievalConfig(TrainConfig):
    """What to train for retrieval and how. No head g: `class_embed`, `head_residual` and the
    linear-probe fields of `TrainConfig` do not apply."""

    method: Literal["aape", "zeroshot"] = "aape"  # zeroshot: CLIP, the image embedding as query
    # L_task: CLIP's contrastive loss between the query and the batch's captions, in-batch
    caption_pairing: CaptionPairing = "sampled"  # one random caption per image and step
    contrastive_direction: Direction = "symmetric"  # mean of image->text and text->image CE
    query: Query = "h"  # the image's query at test: norm(h(x)) (the paper) or norm(x + h(x))
    heldout_images: int = Field(500, ge=0)  # training images kept out for the health metrics
    # Recipe defaults for caption data (the paper gives none for retrieval)
    recipe: Literal["coop_sgd", "adamw"] = "adamw"
    batch_size: int = Field(128, ge=2)
    adamw_epochs: int = Field(30, ge=1)

    def tag(self) -> str:
        if self.method != "aape":
            return self.method
        return f"aape-{self.aggregator}-lam{self.lambda_distill:g}-{self.query}-{self.recipe}"


def load_retrieval_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> RetrievalConfig:
    """A retrieval config from YAML/JSON plus `key=value` overrides, or a one-line UserError."""
    return load_config(path, overrides, model=RetrievalConfig)
