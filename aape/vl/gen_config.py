"""Captioning/VQA training configuration: the method's `TrainConfig` plus the switches of the
decisions the paper leaves open for the LiMBeR-style prefix (docs/captioning-vqa.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from aape.config import TrainConfig, load_config

PrefixPosition = Literal["before", "after"]
HMode = Literal["finetune", "frozen"]


class GenConfig(TrainConfig):
    """What to train for captioning / VQA. Trainable: LiMBeR's linear map, and for `aape` the
    prefix map, h and the aggregator; the CLIP and the LM stay frozen."""

    method: Literal["limber", "aape"] = "aape"  # limber: the image tokens alone (no h prefix)
    lm: str = "smollm2"  # a HF name, a local folder, a .gguf file or smollm2
    lm_dtype: str = "float32"
    k: int = Field(5, ge=1)  # LiMBeR's soft image tokens
    aape_tokens: int = Field(1, ge=1)  # LM tokens norm(h(x)) is mapped to
    prefix_position: PrefixPosition = "before"  # the AAPE tokens before or after the k tokens
    h_mode: HMode = "finetune"  # frozen: h keeps its initial (part 1) weights
    h_init: str | None = None  # a retrieval artifact folder (`aape vl train`) to start h from
    init_from: str | None = None  # a run folder (prefix.pt) to start every trainable part from
    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    recipe: Literal["coop_sgd", "adamw"] = "adamw"
    warmup_steps: int = Field(10, ge=0)
    caption_prompt: str = "A picture of"  # text between the prefix and the caption ("" = none)
    max_caption_tokens: int = Field(32, ge=1)  # training captions are cut to this many tokens
    log_every: int = Field(10, ge=1)
    cpu_threads: int = Field(1, ge=0)  # intra-op threads on CPU; 0 = torch's default

    def tag(self) -> str:
        if self.method == "limber":
            return f"limber-k{self.k}"
        return f"aape-k{self.k}-lam{self.lambda_distill:g}-{self.prefix_position}-h{self.h_mode}"


def load_gen_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> GenConfig:
    """A captioning config from YAML/JSON plus `key=value` overrides, or a one-line UserError."""
    return load_config(path, overrides, model=GenConfig)


def baseline_rows(base: GenConfig) -> dict[str, GenConfig]:
    """The rows of the report, all in one harness: LiMBeR (no AAPE prefix), the AAPE prefix
    with lambda = 0, and with lambda = 5; every other field as `base`."""
    return {
        "limber": base.model_copy(update={"method": "limber"}),
        "aape-lam0": base.model_copy(update={"method": "aape", "lambda_distill": 0.0}),
        "aape-lam5": base.model_copy(update={"method": "aape", "lambda_distill": 5.0}),
    }
