"""The three losses of AAPE: L = L_task + lambda * L_distill + L_reward."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def distill_loss(
    h: torch.Tensor, p_a: torch.Tensor, *, grad_to_teacher: bool = False
) -> torch.Tensor:
    """|| norm(h(x)) - stopgrad(p_a) ||^2, mean over the batch (p_a is already normalised)."""
    teacher = p_a if grad_to_teacher else p_a.detach()
    return (F.normalize(h, dim=-1) - teacher).pow(2).sum(-1).mean()


def reward_loss(x: torch.Tensor, p_a: torch.Tensor, scale: float) -> torch.Tensor:
    """-s * max(cos(x, p_a), 0): the CLIP reward (CLIPScore with w = s) as a loss. Both are unit
    vectors (normalised CLIP features; the aggregator normalises p_a), so the cosine is their
    dot product (half the time of `cosine_similarity` with its backward)."""
    cos = torch.linalg.vecdot(x, p_a)
    return -(scale * cos.clamp_min(0.0)).mean()


@dataclass
class LossParts:
    total: torch.Tensor
    task: torch.Tensor
    distill: torch.Tensor
    reward: torch.Tensor


def aape_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    x: torch.Tensor,
    h: torch.Tensor,
    p_a: torch.Tensor | None,
    *,
    lambda_distill: float,
    reward_scale: float,
    grad_to_teacher: bool,
) -> LossParts:
    """All terms; without a teacher (`p_a` None) only L_task."""
    task = task_loss(logits, labels)
    zero = task.new_zeros(())
    if p_a is None:
        return LossParts(task, task, zero, zero)
    distill = distill_loss(h, p_a, grad_to_teacher=grad_to_teacher) if lambda_distill else zero
    reward = reward_loss(x, p_a, reward_scale)
    return LossParts(task + lambda_distill * distill + reward, task, distill, reward)
