"""Retrieval training on cached features: the method's loop pieces with a contrastive L_task.

The prompts of an image are its own captions: the aggregator (no learned per-class query; its
query is the mean of the image's captions + f(x)) pools them into p_a, `L_reward` trains it,
`L_distill` pulls h(x) to p_a, and L_task is CLIP's in-batch contrastive loss between the query
and the batch's captions. The updates are `aape.updates.Updates` with that student (one thread
or the two-thread teacher/student pipeline, the same numbers). A few training images are held
out for the health metrics. Deterministic for a seed on CPU; resumes from its checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from aape.losses import distill_loss, reward_loss
from aape.model import masked_mean
from aape.torch_files import checkpoint_dict
from aape.train import (
    CHECKPOINT_KEYS,
    RESUME_FIX,
    ViewSampler,
    checkpoint_state,
    run_epochs,
    save_atomic,
)
from aape.updates import Updates, optimizer_step
from aape.vl.config import RetrievalConfig
from aape.vl.losses import contrastive_loss
from aape.vl.model import RetrievalAAPE
from aape.vl.tasks import CaptionSplit, subset_images
from prompt_banks.clip import resolve_device
from prompt_banks.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


class CaptionUpdates(Updates):
    """`Updates` whose student is h alone, trained by the contrastive L_task + lambda L_distill;
    the labels of a batch are its images' rows in the caption bank."""

    def __init__(
        self,
        model: RetrievalAAPE,
        cfg: RetrievalConfig,
        bank: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator,
        caption_generator: torch.Generator,
    ) -> None:
        self.caption_generator = caption_generator  # the student's draws (its own thread)
        super().__init__(model, cfg, bank, mask, bank.new_zeros(0, bank.shape[-1]), generator)  # type: ignore[arg-type]

    def student_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.h.parameters())

    def targets(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The texts the batch's images are contrasted with [M, d] and each one's image [M]."""
        p, m = self.bank.index_select(0, y), self.mask.index_select(0, y)
        own = torch.arange(len(y), device=y.device)
        pairing = self.cfg.caption_pairing  # type: ignore[attr-defined]
        if pairing == "mean":
            return masked_mean(p, m), own
        if pairing == "all":
            return p[m], own.repeat_interleave(m.sum(1))
        counts = m.sum(1).cpu()
        pick = (torch.rand(len(y), generator=self.caption_generator) * counts).long()
        return p[own, pick.to(y.device)], own

    def task(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h(x) and L_task."""
        model: RetrievalAAPE = self.model  # type: ignore[assignment]
        h = model.h(x)
        texts, owner = self.targets(y)
        logits = model.query(x, h) @ texts.T / self.cfg.tau
        return h, contrastive_loss(logits, owner, self.cfg.contrastive_direction)  # type: ignore[attr-defined]

    def student(self, x: torch.Tensor, y: torch.Tensor, p_a: torch.Tensor) -> torch.Tensor:
        lam = self.cfg.lambda_distill
        h, task = self.task(x, y)
        distill = distill_loss(h, p_a) if lam else task.new_zeros(())
        optimizer_step(self.optimizers["student"], task + lam * distill)
        return torch.stack([task, distill]).detach()

    def coupled_update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h, task = self.task(x, y)
        p_a = self.model.aggregator(x, self.bank, self.mask, y, generator=self.generator)  # type: ignore[misc]
        distill = distill_loss(h, p_a, grad_to_teacher=True)
        reward = reward_loss(x, p_a, self.cfg.reward_scale)
        optimizer_step(self.optimizers["all"], task + self.cfg.lambda_distill * distill + reward)
        return torch.stack([task, distill, reward]).detach()


@dataclass
class RetrievalResult:
    config: RetrievalConfig  # resolved: epochs fixed
    model: RetrievalAAPE | None  # None for the zero-shot baseline
    model_id: str
    dim: int
    dataset: str
    history: list[dict[str, float]] = field(default_factory=list)
    health: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    epochs_done: int = 0
    checkpoint: Path | None = None

    @torch.no_grad()
    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """Unit query vectors [N, d] for image embeddings x [N, d] (CLIP's own for zero-shot)."""
        x = F.normalize(x.float(), dim=-1)
        if self.model is None:
            return x
        device = next(self.model.parameters()).device
        return self.model.eval().query(x.to(device)).cpu()


def heldout_positions(n_images: int, wanted: int) -> list[int]:
    """Evenly spaced images kept out of training: at most `wanted` and a tenth of them."""
    n = min(wanted, n_images // 10)
    if n == 0:
        return []
    step = n_images // n
    return list(range(0, step * n, step))


@torch.no_grad()
def retrieval_health(
    model: RetrievalAAPE, held: CaptionSplit, cfg: RetrievalConfig, device: torch.device
) -> dict[str, float]:
    """Caption-retrieval accuracy on held-out training images: each image picks, among the
    held-out images' caption sets, the one it belongs to. teacher: argmax_j cos(x, p_a(x, P_j));
    student: argmax_j cos(query(x), mean(P_j)); zeroshot: argmax_j cos(x, mean(P_j))."""
    if model.aggregator is None or held.n_images < 2:
        return {}
    first = held.features.view == 0
    x = F.normalize(held.features.x[first], dim=-1).to(device)
    bank, mask = (t.to(device) for t in held.captions.padded())
    target = torch.arange(len(x), device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    teacher = model.aggregator.teacher_scores(x, bank, mask, generator=gen).argmax(1)
    means = masked_mean(bank, mask)
    student = (model.query(x) @ means.T).argmax(1)
    zeroshot = (x @ means.T).argmax(1)
    return {
        "teacher_acc": float((teacher == target).float().mean()),
        "student_acc": float((student == target).float().mean()),
        "zeroshot_acc": float((zeroshot == target).float().mean()),
        "n_heldout": len(x),
    }


def _restore(path: Path, cfg: RetrievalConfig, device: torch.device) -> dict[str, object] | None:
    if not path.is_file():
        return None
    state = checkpoint_dict(
        path, CHECKPOINT_KEYS, field="checkpoint", fix=RESUME_FIX, map_location=device
    )
    if state.get("config") != cfg.model_dump():
        raise UserError(
            f"checkpoint {path}: it was trained with another config; "
            "use a new --out directory or pass --force"
        )
    return state


def train_retrieval(
    train: CaptionSplit,
    cfg: RetrievalConfig,
    *,
    model_id: str,
    dataset: str,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    until_epoch: int | None = None,
    progress: bool = True,
) -> RetrievalResult:
    """Train retrieval AAPE on a caption dataset's training split (or return the zero-shot
    baseline). With `checkpoint_dir`, save every `checkpoint_every` epochs and at the end, and
    continue from a checkpoint there when `resume`."""
    cfg = cfg.resolve(0)
    dim = train.features.dim
    base = {"model_id": model_id, "dim": dim, "dataset": dataset}
    if cfg.method == "zeroshot":
        return RetrievalResult(cfg, None, **base)
    held_pos = heldout_positions(train.n_images, cfg.heldout_images)
    fit_pos = sorted(set(range(train.n_images)) - set(held_pos))
    if len(fit_pos) < 2:
        raise UserError(
            f"dataset {dataset}: {len(fit_pos)} training image(s); retrieval training needs 2+"
        )
    fit, held = subset_images(train, fit_pos), subset_images(train, held_pos)
    device = resolve_device(cfg.device)
    bank, mask = fit.captions.padded()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = RetrievalAAPE(dim, cfg, bank, mask).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)  # data order and views
    agg_gen = torch.Generator(device=device).manual_seed(cfg.seed)  # `random` aggregator
    cap_gen = torch.Generator().manual_seed(cfg.seed + 1)  # sampled captions (student side)
    bank, mask = bank.to(device), mask.to(device)
    updates = CaptionUpdates(model, cfg, bank, mask, agg_gen, cap_gen)
    history: list[dict[str, float]] = []
    start_epoch, seconds = 0, 0.0
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    state = _restore(ckpt, cfg, device) if ckpt is not None and resume else None
    if state is not None:
        model.load_state_dict(state["model"])  # type: ignore[arg-type]
        updates.load_state_dict(state["optimizers"])  # type: ignore[arg-type]
        for g, key in ((gen, "gen"), (agg_gen, "agg_gen"), (cap_gen, "cap_gen")):
            g.set_state(state[key].cpu())  # type: ignore[union-attr]
        history, start_epoch, seconds = state["history"], state["epoch"], state["seconds"]  # type: ignore[assignment]

    def save(epoch: int, seconds: float) -> None:
        if ckpt is not None:
            generators = {"gen": gen, "agg_gen": agg_gen, "cap_gen": cap_gen}
            state = checkpoint_state(cfg, epoch, seconds, model, updates, generators, history)
            save_atomic({**state, **base}, ckpt)

    x_all = F.normalize(fit.features.x, dim=-1).to(device)
    img_all = fit.features.image_index.to(device)
    epochs = cfg.epochs or 1
    stop = epochs if until_epoch is None else min(until_epoch, epochs)
    model.train()
    seconds, epochs_done, health = run_epochs(
        updates, cfg, x_all, img_all, ViewSampler(fit.features), gen,
        start_epoch=start_epoch, stop=stop, history=history, seconds=seconds, save=save,
        health=lambda: retrieval_health(model.eval(), held, cfg, device),
        desc=f"train {dataset}", progress=progress,
    )  # fmt: skip
    if health:
        log.info(
            "%s: teacher_acc=%.3f student_acc=%.3f (zero-shot %.3f) on %d held-out images",
            dataset,
            health["teacher_acc"],
            health["student_acc"],
            health["zeroshot_acc"],
            health["n_heldout"],
        )
    return RetrievalResult(
        cfg,
        model,
        history=history,
        health=health,
        train_seconds=seconds,
        epochs_done=epochs_done,
        checkpoint=ckpt,
        **base,
    )
