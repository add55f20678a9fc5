"""Training the prefix on cached CLIP features with a frozen LM.

One step: B images drawn at random (seeded), one of each image's captions drawn at random;
the LM reads [prefix(x)] caption <eos> and L_task is its next-token loss on the caption and
<eos>. For `aape`, p_a = aggregator(x, the image's own CLIP-embedded captions) as in retrieval,
L = L_task + lambda * L_distill(h(x), p_a) + L_reward(x, p_a) (`aape.losses`). AdamW with a
linear warm-up then cosine decay over the steps. CLIP and the LM never train.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from aape.losses import distill_loss, reward_loss
from aape.updates import flush_denormals, optimizer_step
from aape.vl.gen_config import GenConfig
from aape.vl.lm import FrozenLM, cpu_threads
from aape.vl.prefix import ImageSeg, PrefixModel, TextSeg, build_inputs, next_token_loss
from prompt_banks.errors import UserError


@dataclass
class CaptionTrainData:
    """Training images: view-0 CLIP features, captions (text and CLIP embedding, padded)."""

    x: torch.Tensor  # [N, d]
    captions: list[list[str]]  # per image
    bank: torch.Tensor  # [N, n, d] CLIP embeddings of the captions
    mask: torch.Tensor  # [N, n]

    def __post_init__(self) -> None:
        if len(self.x) == 0:
            raise UserError("training data: no image with captions; import and embed some first")


@dataclass
class GenResult:
    config: GenConfig
    model: PrefixModel
    clip_dim: int
    lm_dim: int
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    steps_per_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        first, last = self.history[:3], self.history[-3:]
        mean = lambda rows: sum(r["task"] for r in rows) / max(len(rows), 1)  # noqa: E731
        return {
            "steps": len(self.history),
            "task_loss_first": mean(first),
            "task_loss_last": mean(last),
            "train_seconds": self.train_seconds,
            "steps_per_s": self.steps_per_s,
        }


def step_lr(cfg: GenConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.adamw_lr * (step + 1) / (cfg.warmup_steps + 1)
    span = max(cfg.steps - cfg.warmup_steps, 1)
    return 0.5 * cfg.adamw_lr * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / span))


def load_h_init(model: PrefixModel, cfg: GenConfig) -> None:
    """Start h from part 1's retrieval artifact when `h_init` names one."""
    if cfg.h_init is None or not model.uses_aape:
        return
    from aape.vl.inference import load_retrieval_artifact

    result, _ = load_retrieval_artifact(cfg.h_init)
    if result.dim != model.image_map.in_features:
        raise UserError(
            f"h_init: {cfg.h_init} was trained for d = {result.dim}, this CLIP has "
            f"d = {model.image_map.in_features}; use an artifact of the same CLIP"
        )
    model.h.load_state_dict(result.model.h.state_dict())  # type: ignore[union-attr]


def check_config(cfg: GenConfig) -> None:
    """What a config must hold before anything loads."""
    if cfg.method == "aape" and cfg.h_mode == "frozen" and cfg.h_init is None:
        raise UserError("h_mode=frozen needs h_init: a retrieval artifact from `aape vl train`")


def train_prefix(
    lm: FrozenLM, data: CaptionTrainData, cfg: GenConfig, *, progress: bool = True
) -> GenResult:
    """Train the prefix for `cfg.steps` steps; deterministic for a seed on one device."""
    check_config(cfg)
    device = lm.device
    clip_dim = int(data.x.shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = PrefixModel(clip_dim, lm.dim, cfg)
    load_h_init(model, cfg)
    model = model.to(device).train()
    opt = torch.optim.AdamW(
        model.trainable(cfg), lr=cfg.adamw_lr, weight_decay=cfg.adamw_weight_decay
    )
    rng = random.Random(cfg.seed)
    agg_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    x_all = F.normalize(data.x.float(), dim=-1).to(device)
    bank, mask = data.bank.to(device), data.mask.to(device)
    history: list[dict[str, float]] = []
    n, size = len(x_all), min(cfg.batch_size, len(x_all))
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.tag()}", disable=not progress)
    start = time.perf_counter()
    with flush_denormals(), cpu_threads(cfg.cpu_threads, device):
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = step_lr(cfg, step)
            images = rng.sample(range(n), size)
            texts = [rng.choice(data.captions[i]) for i in images]
            idx = torch.tensor(images, device=device)
            x = x_all.index_select(0, idx)
            prefixes, h = model(x)
            seqs = [
                [
                    ImageSeg(j),
                    TextSeg(cfg.caption_prompt),
                    TextSeg(t, loss=True, eos=True, max_tokens=cfg.max_caption_tokens),
                ]
                for j, t in enumerate(texts)
            ]
            embeds, attn, labels = build_inputs(lm, prefixes, seqs, pad_left=False)
            task = next_token_loss(lm, embeds, attn, labels)
            zero = task.new_zeros(())
            distill, reward = zero, zero
            if h is not None:
                p_a = model.aggregator(x, bank, mask, idx, generator=agg_gen)
                grad = cfg.distill_grad_to_aggregator
                distill = distill_loss(h, p_a, grad_to_teacher=grad) if cfg.lambda_distill else zero
                reward = reward_loss(x, p_a, cfg.reward_scale)
            loss = task + cfg.lambda_distill * distill + reward
            optimizer_step(opt, loss)
            row = {"step": step + 1, "task": task.item(), "distill": distill.item()}
            history.append({**row, "reward": reward.item(), "loss": loss.item()})
            if step % cfg.log_every == 0:
                bar.set_postfix(task=f"{row['task']:.3f}", distill=f"{row['distill']:.3f}")
    seconds = time.perf_counter() - start
    bar.close()
    model.eval()
    return GenResult(cfg, model, clip_dim, lm.dim, history, seconds, cfg.steps / max(seconds, 1e-9))
