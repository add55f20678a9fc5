"""The parameter updates of one AAPE training epoch.

With the stop-gradient teacher (the default), the aggregator learns from L_reward alone and h, g
from L_task + lambda * L_distill alone, with p_a as a constant: two independent updates per
batch, a teacher update and a student update, that give the same numbers as one backward
through the summed loss. On CPU they run as a two-thread pipeline: the teacher (aggregator) a
few batches ahead, handing each p_a to the student (h, g) on a second core. With
`distill_grad_to_aggregator` the losses are coupled and one update trains everything.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch

from aape.config import TrainConfig
from aape.losses import aape_loss, distill_loss, reward_loss, task_loss
from aape.model import AAPE, PromptAggregator

Batch = tuple[torch.Tensor, torch.Tensor]  # x [B, d] (normalised), labels [B]


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    # One fused kernel per step where torch has one (CPU, CUDA): 2.5-3x faster than foreach on
    # CPU; the same update (bitwise for SGD, within an ulp for AdamW).
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    impl: dict[str, bool] = {"fused": True} if fused else {"foreach": True}
    if cfg.recipe == "coop_sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.sgd_lr,
            momentum=cfg.sgd_momentum,
            weight_decay=cfg.sgd_weight_decay,
            **impl,
        )
    return torch.optim.AdamW(params, lr=cfg.adamw_lr, weight_decay=cfg.adamw_weight_decay, **impl)


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Subnormal floats flushed to zero on this thread (the setting is per thread, so the
    student thread sets it too): the zero-initialised layers' first tiny updates produce them,
    and x86 arithmetic on them is many times slower (the loop ran 1.6x slower). Only values
    below 1e-38 change."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` for a block (None: unchanged). Process-wide:
    for a process that runs one run at a time, not for a pool of threads sharing it."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def training_threads(pipelined: bool) -> Iterator[ThreadPoolExecutor | None]:
    """With `pipelined`, a second thread for the student updates and half the cores for each
    side's ops; otherwise the current settings."""
    if not pipelined:
        yield None
        return
    with torch_threads(max(1, torch.get_num_threads() // 2)):
        pool = ThreadPoolExecutor(
            1, "aape-student", initializer=torch.set_flush_denormal, initargs=(True,)
        )
        try:
            yield pool
        finally:
            pool.shutdown()


class Updates:
    """The optimizers of a run and the updates of one batch or one epoch."""

    def __init__(
        self,
        model: AAPE,
        cfg: TrainConfig,
        bank: torch.Tensor,
        mask: torch.Tensor,
        class_embed: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        assert model.aggregator is not None
        self.model, self.cfg = model, cfg
        self.bank, self.mask, self.w_cls, self.generator = bank, mask, class_embed, generator
        self.coupled = cfg.distill_grad_to_aggregator
        # Attention over a bank that fills every slot needs no mask (one op less each way).
        self.needs_mask = cfg.aggregator != "attention" or not bool(mask.all())
        student = self.student_parameters()
        teacher = list(model.aggregator.parameters())  # none for `mean` and `random`
        if self.coupled:
            self.optimizers = {"all": make_optimizer(cfg, student + teacher)}
        else:
            self.optimizers = {"student": make_optimizer(cfg, student)}
            if teacher:
                self.optimizers["teacher"] = make_optimizer(cfg, teacher)

    def student_parameters(self) -> list[torch.nn.Parameter]:
        """What the student update trains: h and g (retrieval's student has no g)."""
        return [*self.model.h.parameters(), *self.model.g.parameters()]

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])

    def gather(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prompts of each label's class, and their mask where the aggregator needs it."""
        p, m = PromptAggregator.gather(self.bank, self.mask, y)
        return p, m if self.needs_mask else None

    def teacher(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        gathered: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The aggregator's update from L_reward; returns p_a (a constant) and the reward."""
        aggregator = self.model.aggregator
        assert aggregator is not None
        p_a = aggregator(x, self.bank, self.mask, y, generator=self.generator, gathered=gathered)
        reward = reward_loss(x, p_a, self.cfg.reward_scale)
        if "teacher" in self.optimizers:
            optimizer_step(self.optimizers["teacher"], reward)
        return p_a.detach(), reward.detach()

    def student(self, x: torch.Tensor, y: torch.Tensor, p_a: torch.Tensor) -> torch.Tensor:
        """The update of h and g from L_task + lambda L_distill; returns [task, distill]."""
        lam = self.cfg.lambda_distill
        h, logits = self._student_forward(x)
        task = task_loss(logits, y)
        distill = distill_loss(h, p_a) if lam else task.new_zeros(())
        optimizer_step(self.optimizers["student"], task + lam * distill)
        return torch.stack([task, distill]).detach()

    def _student_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h(x) and the logits of the training classes, [B, d] and [B, C]."""
        model = self.model
        h = model.h(x)
        return h, model.g.cosines(x, h, model.g.prepare(self.w_cls)) / self.cfg.tau

    def coupled_update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One update of everything through the summed loss; returns [task, distill, reward]."""
        h, logits = self._student_forward(x)
        p_a = self.model.aggregator(x, self.bank, self.mask, y, generator=self.generator)  # type: ignore[misc]
        parts = aape_loss(
            logits,
            y,
            x,
            h,
            p_a,
            lambda_distill=self.cfg.lambda_distill,
            reward_scale=self.cfg.reward_scale,
            grad_to_teacher=True,
        )
        optimizer_step(self.optimizers["all"], parts.total)
        return torch.stack([parts.task, parts.distill, parts.reward]).detach()

    def epoch(self, batches: Sequence[Batch], pool: ThreadPoolExecutor | None) -> dict[str, float]:
        """All updates of one epoch; the mean loss terms over its batches."""
        if self.coupled:
            terms = torch.stack([self.coupled_update(x, y) for x, y in batches])
            task, distill, reward = terms.mean(0).tolist()
        else:
            if pool is None:
                students, rewards = [], []
                for x, y in batches:
                    p_a, reward_t = self.teacher(x, y, self.gather(y))
                    rewards.append(reward_t)
                    students.append(self.student(x, y, p_a))
            else:
                students, rewards = self._pipelined_epoch(batches, pool)
            task, distill = torch.stack(students).mean(0).tolist()
            reward = float(torch.stack(rewards).mean())
        total = task + self.cfg.lambda_distill * distill + reward
        return {"loss": total, "task": task, "distill": distill, "reward": reward}

    def _pipelined_epoch(
        self, batches: Sequence[Batch], pool: ThreadPoolExecutor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The teacher updates on this thread, the student updates on the pool's. The student
        side, which waits on the teacher, also gathers each batch's prompts a few batches ahead
        (the [B, n, d] copy is a tenth of the teacher's step and needs no parameters)."""
        ahead = 2
        teachers: queue.SimpleQueue[torch.Tensor | None] = queue.SimpleQueue()
        prompts: queue.SimpleQueue[tuple[torch.Tensor, torch.Tensor | None] | None]
        prompts = queue.SimpleQueue()

        def student_side() -> list[torch.Tensor]:
            terms = []
            try:
                for _, y in batches[:ahead]:
                    prompts.put(self.gather(y))
                for i, (x, y) in enumerate(batches):
                    p_a = teachers.get()
                    if p_a is None:  # the teacher side failed; its error is raised there
                        break
                    terms.append(self.student(x, y, p_a))
                    if i + ahead < len(batches):
                        prompts.put(self.gather(batches[i + ahead][1]))
            except BaseException:
                prompts.put(None)
                raise
            return terms

        done = pool.submit(student_side)
        rewards = []
        try:
            for x, y in batches:
                gathered = prompts.get()
                if gathered is None:  # the student side failed: its error is raised below
                    break
                p_a, reward = self.teacher(x, y, gathered)
                rewards.append(reward)
                teachers.put(p_a)
        except BaseException:
            teachers.put(None)
            raise
        return done.result(), rewards
