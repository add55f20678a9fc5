"""Training grids as independent runs: list a protocol's runs as small picklable specs, then
execute any one of them anywhere (a thread, a process, a Ray worker on another machine).

A `RunSpec` names what to run, not the data: each worker loads its task from the stores (feature
cache, bank store, few-shot manifests) by the spec's `TaskSource`, so no tensor travels with a
run. `execute` trains and tests through the same per-run code as the serial protocols of
`aape.protocols` and publishes `result.json` atomically; a complete run is read back, so a grid
killed halfway resumes where it stopped. `prepare` extracts the features a grid will read once,
before the fan-out, so workers only read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aape import protocols
from aape.config import TrainConfig
from aape.data import Task
from aape.protocol_names import PROTOCOLS, TRANSFER_PROTOCOLS
from aape.updates import torch_threads
from prompt_banks.clip import CLIPRef, LoadedCLIP, load_clip
from prompt_banks.errors import UserError

if TYPE_CHECKING:
    from aape.tasks import PreparedTask

# A transfer target's train split is never read: one shot, seed 0 (as `aape eval`).
TARGET_DRAW = (1, 0)

_clips: dict[CLIPRef, LoadedCLIP] = {}
_clips_lock = threading.Lock()


def shared_clip(ref: CLIPRef) -> LoadedCLIP:
    """The CLIP of `ref`, loaded once per process (a worker runs many runs; loading ViT-B/16
    for each would cost more than a zero-shot run)."""
    with _clips_lock:
        if ref not in _clips:
            _clips[ref] = load_clip(ref)
        return _clips[ref]


@dataclass(frozen=True)
class TaskSource:
    """Where a run's Task comes from: a registered dataset read through the stores of `home`,
    or a bring-your-own-features folder. `name` is the task's name in run folders."""

    name: str
    dataset: str | None = None
    features_dir: str | None = None
    home: str | None = None
    data_root: str | None = None
    clip: CLIPRef | None = None  # a dataset's CLIP (a features folder holds its own features)
    bank_domain: str | None = None
    bank_snapshot: str | None = None  # read the bank as of this snapshot (None: as it is now)
    n_views: int | None = None  # augmented views per train image (None: the default 16)
    max_eval_images: int | None = None  # per class in val/test (None: all)
    max_missing: int = 0  # missing or unreadable images tolerated (aape.tasks)
    shots_policy: str = "error"  # a class with fewer than K train images (aape.fewshot)

    def load(self, shots: int, seed: int) -> Task:
        """The task of `shots` images per class drawn by `seed`, read from the stores."""
        if self.features_dir is not None:
            from aape.byof import load_task as load_byof
            from prompt_banks.paths import banks_dir

            store = banks_dir(self.home) if self.bank_domain else None
            return load_byof(
                self.features_dir,
                bank_store=store,
                bank_domain=self.bank_domain,
                shots=shots,
                seed=seed,
                bank_snapshot=self.bank_snapshot,
                shots_policy=self.shots_policy,
            )
        return self.prepare(shots, seed, progress=False).task

    def prepare(self, shots: int, seed: int, *, progress: bool = True) -> PreparedTask:
        """`aape.tasks.prepare_task` for this dataset: extracts what the cache lacks."""
        from aape.datasets import load_dataset
        from aape.tasks import prepare_task, trim_eval

        if self.dataset is None:
            raise UserError(f"dataset: {self.name} is a features folder; it has nothing to extract")
        ds = trim_eval(load_dataset(self.dataset, self.data_root), self.max_eval_images)
        return prepare_task(
            dataset=ds,
            home=self.home,
            clip=shared_clip(self._clip()),
            bank_domain=self.bank_domain,
            shots=shots,
            seed=seed,
            n_views=self.n_views,
            progress=progress,
            bank_snapshot=self.bank_snapshot,
            max_missing=self.max_missing,
            shots_policy=self.shots_policy,
        )

    def _clip(self) -> CLIPRef:
        if self.clip is None:
            raise UserError(f"clip: the source of dataset {self.name} needs a CLIP model")
        return self.clip


def dataset_source(dataset: str, **fields: Any) -> TaskSource:
    """The source of a registered dataset, named as the dataset names itself (a `folder`
    dataset's name says which folder, so two folders never share run folders)."""
    from aape.datasets import load_dataset

    name = load_dataset(dataset, fields.get("data_root")).name
    return TaskSource(name=name, dataset=dataset, **fields)


def byof_source(features_dir: str, **fields: Any) -> TaskSource:
    return TaskSource(name=Path(features_dir).name, features_dir=features_dir, **fields)


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: protocol, task, config (seeded), shots, seed, and where it lands."""

    protocol: str
    source: TaskSource
    config: TrainConfig
    shots: int
    seed: int
    runs_root: str
    targets: tuple[TaskSource, ...] = ()  # cross-dataset / domain generalisation test sets

    def folder(self, inputs: protocols.RunInputs) -> Path:
        """Where the run lands, given what its loaded task reads (`protocols.run_identity`)."""
        return protocols.run_dir(
            Path(self.runs_root),
            self.protocol,
            self.source.name,
            self.config,
            f"k{self.shots}-s{self.seed}",
            inputs,
        )

    def label(self) -> str:
        return f"{self.source.name} {self.config.tag()} k={self.shots} seed={self.seed}"


def run_specs(
    protocol: str,
    source: TaskSource,
    cfgs: Iterable[TrainConfig],
    runs_root: str | Path,
    *,
    shots: Iterable[int] = protocols.FEW_SHOTS,
    seeds: Iterable[int] = protocols.SEEDS,
    targets: Iterable[TaskSource] = (),
) -> list[RunSpec]:
    """Every run of `protocol` on `source`, in the serial protocols' order (shots, seed, config);
    base-to-new and the transfer protocols train at the largest shot count only. A config
    listed twice is one run (`protocols.unique_configs`)."""
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol: '{protocol}' is unknown; use one of {', '.join(PROTOCOLS)}")
    ks, cfgs, tgts = list(shots), list(cfgs), tuple(targets)
    if not ks:
        raise UserError("shots: give at least one shot count, e.g. 16")
    if protocol != "few-shot":
        ks = [max(ks)]
    if protocol in TRANSFER_PROTOCOLS and not tgts:
        raise UserError(f"targets: protocol {protocol} needs at least one target dataset")
    specs: list[RunSpec] = []
    for k in ks:
        for seed in seeds:
            for cfg in protocols.unique_configs(cfgs):
                spec = RunSpec(
                    protocol=protocol,
                    source=source,
                    config=cfg.model_copy(update={"seed": seed}),
                    shots=k,
                    seed=seed,
                    runs_root=str(runs_root),
                    targets=tgts if protocol not in ("few-shot", "base-to-new") else (),
                )
                specs.append(spec)
    return specs


def execute(
    spec: RunSpec, *, force: bool = False, progress: bool = False, threads: int | None = None
) -> dict[str, Any]:
    """Run `spec` (or read back its complete record) and return its record. The task is loaded
    first: its CLIP model and bank are part of the run's identity, hence of its folder."""
    with torch_threads(threads):
        task = spec.source.load(spec.shots, spec.seed)
        if spec.protocol in ("few-shot", "base-to-new"):
            inputs = protocols.inputs_of(task)
        else:
            inputs = protocols.transfer_inputs(task, (t.name for t in spec.targets))
        folder = spec.folder(inputs)
        done = protocols.completed_run(folder, force)
        if done is not None:
            return done
        args = (spec.config, folder)
        if spec.protocol == "few-shot":
            return protocols.few_shot_run(task, *args, spec.shots, spec.seed, progress)
        if spec.protocol == "base-to-new":
            return protocols.base_to_new_run(task, *args, spec.shots, spec.seed, progress)
        targets = {t.name: t.load(*TARGET_DRAW) for t in spec.targets}
        return protocols.transfer_run(
            task, targets, *args, protocol=spec.protocol, shots=spec.shots, seed=spec.seed,
            progress=progress,
        )  # fmt: skip


def prepare(specs: Iterable[RunSpec], *, progress: bool = True) -> int:
    """Extract, once, every feature the runs of `specs` read that the cache lacks (each
    few-shot draw with its views, the val/test images of sources and targets), and write their
    few-shot manifests, so the workers of a fan-out only read. Returns the feature rows
    computed."""
    draws: dict[TaskSource, set[tuple[int, int]]] = {}
    for spec in specs:
        draws.setdefault(spec.source, set()).add((spec.shots, spec.seed))
        for target in spec.targets:
            draws.setdefault(target, set()).add(TARGET_DRAW)
    computed = 0
    for source, pairs in draws.items():
        if source.dataset is None:  # bring-your-own features: nothing to extract
            continue
        for shots, seed in sorted(pairs):
            computed += source.prepare(shots, seed, progress=progress).extraction.computed
    return computed
