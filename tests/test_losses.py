"""The losses, and where their gradients go."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from aape.config import TrainConfig
from aape.losses import aape_loss, distill_loss, reward_loss
from aape.model import AAPE
from aape.synthetic import make_task


def _setup(grad_to_teacher: bool):
    task = make_task(dim=32, n_classes=5)
    model = AAPE(32, TrainConfig(), task.texts.bank, task.texts.bank_mask)
    with torch.no_grad():  # leave the zero init so f(x) and the head get gradients
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    x, y = task.train.x[:8], task.train.labels[:8]
    h = model.h(x)
    p_a = model.aggregator(x, task.texts.bank, task.texts.bank_mask, y)
    return model, distill_loss(h, p_a, grad_to_teacher=grad_to_teacher)


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_stop_gradient_keeps_distill_out_of_the_aggregator() -> None:
    model, loss = _setup(grad_to_teacher=False)
    loss.backward()
    assert _grad_norm(model.aggregator) == 0.0
    assert _grad_norm(model.h) > 0.0


def test_switch_lets_distill_reach_the_aggregator() -> None:
    model, loss = _setup(grad_to_teacher=True)
    loss.backward()
    assert _grad_norm(model.aggregator) > 0.0


def test_distill_is_zero_when_h_points_at_the_teacher() -> None:
    p = F.normalize(torch.randn(4, 8), dim=-1)
    assert float(distill_loss(3.0 * p, p)) == pytest.approx(0.0, abs=1e-10)
    assert float(distill_loss(-p, p)) == pytest.approx(4.0, abs=1e-5)


def test_reward_is_clipped_at_zero_and_scaled() -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert float(reward_loss(x, p, 2.5)) == pytest.approx(-1.25)


def test_total_is_task_plus_lambda_distill_plus_reward() -> None:
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(4, 3, generator=gen), torch.tensor([0, 1, 2, 0])
    x, h = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    p = F.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    parts = aape_loss(logits, y, x, h, p, lambda_distill=5, reward_scale=2.5, grad_to_teacher=False)
    torch.testing.assert_close(parts.total, parts.task + 5 * parts.distill + parts.reward)
    assert float(parts.task) == pytest.approx(float(F.cross_entropy(logits, y)))
