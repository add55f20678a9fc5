"""Training on cached features: one loop, read top to bottom.

`train(task, cfg)` trains the method named by `cfg.method` on `task.train` and returns a
`TrainResult` whose `classifier.logits(x, texts)` scores any class list. Each epoch draws one random
augmented view per training image. Deterministic for a seed on CPU; with a checkpoint directory
the run saves (atomically) and resumes exactly where it stopped.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from aape.bank_quality import PrunedClassifier, prune_bank
from aape.baselines import Classifier, TextClassifier, train_linear_probe
from aape.config import BANK_METHODS, TrainConfig
from aape.data import ClassTexts, FeatureSet, Task
from aape.model import AAPE, class_embeddings
from aape.torch_files import checkpoint_dict
from aape.updates import Updates, flush_denormals, training_threads
from prompt_banks.atomic import atomic_path
from prompt_banks.clip import resolve_device
from prompt_banks.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_KEYS = ("config", "epoch", "model")  # what every checkpoint of `checkpoint_state` has
# A damaged checkpoint met when resuming: the run starts over.
RESUME_FIX = "delete it, or pass --force, to train the run from the start"


class AAPEHead:
    """A trained AAPE as a `Classifier`: class embeddings of `texts` through h and g."""

    def __init__(self, model: AAPE, class_embed: str) -> None:
        self.model = model.eval()
        self.class_embed = class_embed

    def logits(self, x: torch.Tensor, texts: ClassTexts) -> torch.Tensor:
        device = next(self.model.parameters()).device
        with torch.no_grad():
            w = class_embeddings(texts, self.class_embed).to(device)
            return self.model(x.to(device), w)


@dataclass
class TrainResult:
    config: TrainConfig  # resolved: epochs fixed
    classifier: Classifier
    class_names: list[str]
    model_id: str
    dim: int
    model: AAPE | None = None
    bank_means: torch.Tensor | None = None  # [C, d] of the training classes, when a bank exists
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    health: dict[str, float] = field(default_factory=dict)  # teacher_acc, student_acc, ...
    probe: dict[str, Any] | None = None  # linear probe: the C swept, the scores, the C chosen
    train_seconds: float = 0.0
    epochs_done: int = 0
    checkpoint: Path | None = None

    @property
    def complete(self) -> bool:
        return self.epochs_done >= (self.config.epochs or 0)


def shots_of(features: FeatureSet) -> int:
    """Training images per class (the largest class), which picks CoOp's epoch count."""
    if len(features.labels) == 0:
        return 0
    first_view = torch.zeros(features.n_images, dtype=torch.long)
    first_view[features.image_index] = features.labels
    return int(torch.bincount(first_view).max())


class ViewSampler:
    """Each epoch: a random order of the training images and one random view of each."""

    def __init__(self, features: FeatureSet) -> None:
        n = features.n_images
        self.order = torch.argsort(features.image_index, stable=True)
        self.counts = torch.bincount(features.image_index, minlength=n)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self.n_images = n

    def epoch(self, gen: torch.Generator) -> torch.Tensor:
        perm = torch.randperm(self.n_images, generator=gen)
        pick = (torch.rand(self.n_images, generator=gen) * self.counts[perm]).long()
        return self.order[self.offsets[perm] + pick]


def epoch_lr(cfg: TrainConfig, epoch: int) -> float:
    """Constant warm-up lr, then cosine decay over the remaining epochs (per epoch, as CoOp)."""
    base = cfg.sgd_lr if cfg.recipe == "coop_sgd" else cfg.adamw_lr
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    span = max((cfg.epochs or 1) - cfg.warmup_epochs, 1)
    return 0.5 * base * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))


def run_epochs(
    updates: Updates,
    cfg: TrainConfig,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    sampler: ViewSampler,
    gen: torch.Generator,
    *,
    start_epoch: int,
    stop: int,
    history: list[dict[str, float]],
    seconds: float,
    save: Callable[[int, float], None],
    health: Callable[[], dict[str, float]],
    desc: str,
    progress: bool,
) -> tuple[float, int, dict[str, float]]:
    """Epochs `start_epoch`..`stop` - 1 of a run: the lr schedule, one random view per image,
    the batches' updates; one row per epoch appended to `history`, `save(epoch, seconds)`
    every `checkpoint_every` epochs and at the end, then `health()`. Returns the run's seconds,
    the epochs done and the health metrics.

    The student updates run on a second thread on CPU when torch may use two cores (see
    `updates`); not on GPUs, whose kernels are asynchronous already."""
    pipelined = x_all.is_cpu and not updates.coupled and torch.get_num_threads() > 1
    bar = tqdm(
        range(start_epoch, stop),
        desc=desc,
        disable=not progress,
        initial=start_epoch,
        total=cfg.epochs or 1,
    )
    with flush_denormals(), training_threads(pipelined) as pool:
        for epoch in bar:
            t0 = time.perf_counter()
            updates.set_lr(epoch_lr(cfg, epoch))
            rows = sampler.epoch(gen).to(x_all.device)
            # One gather per epoch; each batch is then a contiguous slice (no per-step indexing).
            x_epoch, y_epoch = x_all.index_select(0, rows), y_all.index_select(0, rows)
            batches = [
                (x_epoch[i : i + cfg.batch_size], y_epoch[i : i + cfg.batch_size])
                for i in range(0, len(rows), cfg.batch_size)
            ]
            losses = updates.epoch(batches, pool)
            seconds += time.perf_counter() - t0
            history.append({"epoch": epoch + 1, "lr": epoch_lr(cfg, epoch), **losses})
            bar.set_postfix(loss=f"{losses['loss']:.3f}", distill=f"{losses['distill']:.3f}")
            done = epoch + 1
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < stop:
                save(done, seconds)
        bar.close()
        epochs_done = max(stop, start_epoch)
        save(epochs_done, seconds)
        # Inside the flush and the thread split: OpenMP workers started before the flush keep
        # subnormals, and the softmax tails over every class are full of them (on 2 cores:
        # 3 s with the process's 2 threads, 0.2-0.5 s with the training's 1).
        return seconds, epochs_done, health()


def heldout_features(task: Task) -> FeatureSet:
    """Held-out images of the training classes: val when present, else test."""
    return task.val if task.val is not None and len(task.val.labels) else task.test


@torch.no_grad()
def health_metrics(
    model: AAPE, task: Task, cfg: TrainConfig, device: torch.device
) -> dict[str, float]:
    """teacher_acc, student_acc (the spec's health metrics) beside cupl_acc and zeroshot_acc."""
    feats = heldout_features(task)
    keep = torch.nonzero(feats.view == 0).squeeze(1)
    if len(keep) == 0 or model.aggregator is None:
        return {}
    step = max(1, math.ceil(len(keep) / cfg.health_max_images))
    keep = keep[::step]  # evenly spaced: deterministic and covers every class
    x = F.normalize(feats.x[keep], dim=-1).to(device)
    y = feats.labels[keep].to(device)
    texts = task.texts
    bank, mask = texts.bank.to(device), texts.bank_mask.to(device)  # type: ignore[union-attr]
    means = texts.bank_mean().to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    teacher = model.aggregator.teacher_scores(x, bank, mask, generator=gen).argmax(1)
    student = F.normalize(model.h(x), dim=-1) @ means.T
    templates = F.normalize(texts.templates.to(device), dim=-1)
    return {
        "teacher_acc": float((teacher == y).float().mean()),
        "student_acc": float((student.argmax(1) == y).float().mean()),
        "cupl_acc": float(((x @ means.T).argmax(1) == y).float().mean()),
        "zeroshot_acc": float(((x @ templates.T).argmax(1) == y).float().mean()),
        "n_heldout": len(x),
    }


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Serialise in memory first: torch.save reports a failed file write (a full disk) as a
    # RuntimeError with no errno, while a plain write raises the OSError that says what happened.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def checkpoint_state(
    cfg: TrainConfig,
    epoch: int,
    seconds: float,
    model: torch.nn.Module,
    updates: Updates,
    generators: dict[str, torch.Generator],
    history: list[dict[str, float]],
    **extra: Any,
) -> dict[str, Any]:
    """What a checkpoint holds: config, progress, weights, optimiser and RNG states (CPU
    tensors), the history, and `extra` (what the run's loader needs)."""
    return {
        "config": cfg.model_dump(),
        "epoch": epoch,
        "seconds": seconds,
        "model": model.state_dict(),
        "optimizers": updates.state_dict(),
        **{name: g.get_state().cpu() for name, g in generators.items()},
        "history": history,
        **extra,
    }


def _check_task(task: Task, cfg: TrainConfig) -> None:
    if len(task.train.labels) == 0:
        raise UserError(f"task {task.name}: the training split is empty; check the dataset/shots")
    needs_bank = cfg.method in BANK_METHODS  # the aggregator (training) needs P_c
    if needs_bank and task.texts.bank is None:
        raise UserError(
            f"task {task.name}: method {cfg.method} needs a prompt bank; pass --bank-domain "
            f"or use --set method=zeroshot"
        )
    if task.texts.bank_mask is not None:
        empty = [
            n for n, m in zip(task.texts.names, task.texts.bank_mask, strict=True) if not m.any()
        ]
        if empty and needs_bank:
            raise UserError(
                f"task {task.name}: no prompts for class(es) {', '.join(empty[:5])}; "
                "generate or import descriptions for them"
            )


def train(task: Task, cfg: TrainConfig, **options: Any) -> TrainResult:
    """Train `cfg.method` on `task` (`options`: those of `_train`). With `cfg.prune_margin`, on
    the bank pruned by the descriptions' margins on the training shots; the classifier then
    scores its training classes with that bank."""
    if cfg.prune_margin is None or task.texts.bank is None:
        return _train(task, cfg, **options)
    pruned = prune_bank(task.texts, task.train, cfg.prune_margin)
    result = _train(replace(task, texts=pruned), cfg, **options)
    result.classifier = PrunedClassifier(result.classifier, pruned)
    return result


def _train(
    task: Task,
    cfg: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    until_epoch: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `cfg.method` on `task`. With `checkpoint_dir`, save each `checkpoint_every` epochs
    and at the end, and (when `resume`) continue from a checkpoint there. `until_epoch` stops
    early after that many epochs (the checkpoint then resumes the same run)."""
    _check_task(task, cfg)
    cfg = cfg.resolve(shots_of(task.train), task.name)
    device = resolve_device(cfg.device)
    bank_means = task.texts.bank_mean() if task.texts.bank is not None else None
    base = dict(class_names=list(task.texts.names), model_id=task.model_id, dim=task.texts.dim)
    if cfg.method in ("zeroshot", "cupl"):
        kind = "template" if cfg.method == "zeroshot" else "bank_mean"
        return TrainResult(cfg, TextClassifier(kind, cfg.tau), bank_means=bank_means, **base)
    if cfg.method == "linear_probe":
        start = time.perf_counter()
        probe, sweep = train_linear_probe(task.train, task.texts, cfg, val=task.val)
        return TrainResult(
            cfg,
            probe,
            bank_means=bank_means,
            probe=sweep or None,
            train_seconds=time.perf_counter() - start,
            epochs_done=cfg.epochs or 0,
            **base,
        )

    texts = task.texts
    bank, mask = texts.bank.to(device), texts.bank_mask.to(device)  # type: ignore[union-attr]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = AAPE(texts.dim, cfg, bank.cpu(), mask.cpu()).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)  # data order and views (CPU)
    agg_gen = torch.Generator(device=device).manual_seed(cfg.seed)  # `random` aggregator
    w_cls = class_embeddings(texts, cfg.class_embed).to(device)
    updates = Updates(model, cfg, bank, mask, w_cls, agg_gen)
    history: list[dict[str, float]] = []
    start_epoch, seconds = 0, 0.0
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if ckpt_path is not None and resume and ckpt_path.is_file():
        state = checkpoint_dict(
            ckpt_path, CHECKPOINT_KEYS, field="checkpoint", fix=RESUME_FIX, map_location=device
        )
        if state["config"] != cfg.model_dump():
            raise UserError(
                f"checkpoint {ckpt_path}: it was trained with another config; "
                "use a new --out directory or pass --force"
            )
        if "optimizers" not in state:
            raise UserError(
                f"checkpoint {ckpt_path}: written by an older version of aape; "
                "use a new --out directory or pass --force"
            )
        model.load_state_dict(state["model"])
        updates.load_state_dict(state["optimizers"])
        gen.set_state(state["gen"].cpu())
        agg_gen.set_state(state["agg_gen"].cpu())
        history, start_epoch, seconds = state["history"], state["epoch"], state["seconds"]

    x_all = F.normalize(task.train.x, dim=-1).to(device)
    y_all = task.train.labels.to(device)
    sampler = ViewSampler(task.train)
    epochs = cfg.epochs or 1
    stop = epochs if until_epoch is None else min(until_epoch, epochs)

    def save(epoch: int, seconds: float) -> None:
        if ckpt_path is None:
            return
        state = checkpoint_state(
            cfg, epoch, seconds, model, updates, {"gen": gen, "agg_gen": agg_gen}, history,
            class_names=list(texts.names), model_id=task.model_id, dim=texts.dim,
            task=task.name, bank_means=bank_means,
        )  # fmt: skip
        save_atomic(state, ckpt_path)

    model.train()
    seconds, epochs_done, health = run_epochs(
        updates, cfg, x_all, y_all, sampler, gen,
        start_epoch=start_epoch, stop=stop, history=history, seconds=seconds, save=save,
        health=lambda: health_metrics(model.eval(), task, cfg, device),
        desc=f"train {task.name}", progress=progress,
    )  # fmt: skip
    if health:
        log.info(
            "%s: teacher_acc=%.3f student_acc=%.3f (cupl %.3f, zero-shot %.3f)",
            task.name,
            health["teacher_acc"],
            health["student_acc"],
            health["cupl_acc"],
            health["zeroshot_acc"],
        )
    return TrainResult(
        cfg,
        AAPEHead(model, cfg.class_embed),
        model=model,
        bank_means=bank_means,
        history=history,
        health=health,
        train_seconds=seconds,
        epochs_done=epochs_done,
        checkpoint=ckpt_path,
        **base,
    )


def load_checkpoint(path: str | Path, device: str | None = "cpu") -> TrainResult:
    """A trained AAPE back from `checkpoint.pt` (or its directory), e.g. for `aape export`."""
    p = Path(path)
    p = p / CHECKPOINT_NAME if p.is_dir() else p
    if not p.is_file():
        raise UserError(f"--run: no {CHECKPOINT_NAME} at {p}; pass the --out of `aape train`")
    fix = f"train it again with `aape train --out {p.parent} --force`"
    keys = (*CHECKPOINT_KEYS, "dim", "class_names", "model_id")
    state = checkpoint_dict(p, keys, field="--run", fix=fix)
    cfg = TrainConfig(**state["config"])
    model = AAPE(state["dim"], cfg)
    model.load_state_dict(
        {k: v for k, v in state["model"].items() if not k.startswith("aggregator.")}
    )
    model.to(resolve_device(device))
    return TrainResult(
        cfg,
        AAPEHead(model, cfg.class_embed),
        class_names=state["class_names"],
        model_id=state["model_id"],
        dim=state["dim"],
        model=model,
        bank_means=state["bank_means"],
        history=state["history"],
        train_seconds=state["seconds"],
        epochs_done=state["epoch"],
        checkpoint=p,
    )
