"""Running the simulation study: one job per (experiment, shots, variant, seed), in worker
processes, each through the project's own base-to-new protocol, cached per run."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from aape import simulation as sim
from aape.byof import select_shots
from aape.protocols import base_to_new, inputs_of, load_complete, run_dir
from aape.study_plan import TRAINED, VARIANTS, StudyPlan, make_world, truncate_bank
from prompt_banks.schema import stable_hash

# -- running --------------------------------------------------------------------------------


@dataclass
class Row:
    experiment: str
    world: str
    variant: str
    recipe: str
    epochs: int
    shots: int
    seed: int
    n_prompts: str
    base: float
    new: float
    H: float
    teacher_acc: float
    student_acc: float
    train_seconds: float
    reused: bool = False  # read back from an earlier invocation's complete run


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _recipe(cfg: dict[str, Any], variant: str) -> str:
    return cfg["recipe"] if variant in TRAINED else "-"


@dataclass(frozen=True)
class Job:
    experiment: str
    shots: int
    variant: str
    seed: int

    def cost(self, plan: StudyPlan) -> float:
        """Relative training cost (optimizer steps), to start the longest jobs first."""
        if self.variant not in TRAINED:
            return 0.1 * self.shots
        cfg = VARIANTS[self.variant].config(plan.base_config)
        return self.shots * cfg.epochs_for(self.shots)


_WORLDS: dict[tuple[str, str], sim.SimWorld] = {}  # per process: worlds are rebuilt, not shipped


def _world(plan: StudyPlan, world: str) -> sim.SimWorld:
    key = (stable_hash(sim.config_dict(plan.sim_config)), world)
    if key not in _WORLDS:
        _WORLDS[key] = make_world(plan, world)
    return _WORLDS[key]


def run_job(plan: StudyPlan, job: Job, runs_root: Path) -> list[Row]:
    """Train and evaluate one (experiment, K, variant, seed) through `protocols.base_to_new`
    (a complete run under `runs_root` is reused)."""
    exp = next(e for e in plan.experiments if e.name == job.experiment)
    world = _world(plan, exp.world)
    task = world.task
    if exp.n_prompts is not None:
        task = replace(task, texts=truncate_bank(task.texts, exp.n_prompts))
    n_label = str(exp.n_prompts) if exp.n_prompts else "all"
    sim_key = stable_hash(sim.config_dict(plan.sim_config))[:8]
    task = replace(task, name=f"{task.name}-w{plan.world_seed}-{sim_key}-n{n_label}")
    cfg = VARIANTS[job.variant].config(plan.base_config)
    leaf = f"k{job.shots}-s{job.seed}"
    seeded = cfg.model_copy(update={"seed": job.seed})
    folder = run_dir(runs_root, "base-to-new", task.name, seeded, leaf, inputs_of(task))
    reused = load_complete(folder) is not None
    records = base_to_new(
        lambda seed: select_shots(task, job.shots, seed),
        task.name,
        [cfg],
        runs_root,
        shots=job.shots,
        seeds=[job.seed],
        progress=False,
    )
    rows = []
    for rec in records:
        health = rec.get("health") or {}
        rows.append(
            Row(
                experiment=exp.name,
                world=exp.world,
                variant=job.variant,
                recipe=_recipe(rec["config"], job.variant),
                epochs=int(rec["config"].get("epochs") or 0),
                shots=job.shots,
                seed=int(rec["seed"]),
                n_prompts=n_label,
                base=_nan(rec["base"]),
                new=_nan(rec["new"]),
                H=_nan(rec["H"]),
                teacher_acc=_nan(health.get("teacher_acc")),
                student_acc=_nan(health.get("student_acc")),
                train_seconds=float(rec.get("train_seconds") or 0.0),
                reused=reused,
            )
        )
    return rows


def world_traits(plan: StudyPlan, world: str) -> dict[str, float]:
    return sim.traits(_world(plan, world))


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core beats two threads on these small ops


def plan_jobs(plan: StudyPlan) -> list[Job]:
    """Every (experiment, K, variant, seed) of the plan, in table order."""
    return [
        Job(e.name, k, v, s)
        for e in plan.experiments
        for k in e.shots
        for v in e.variants
        for s in plan.seeds
    ]


def run_plan(
    plan: StudyPlan, runs_root: Path, *, jobs: int = 1, progress: bool = True
) -> tuple[list[Row], dict[str, dict[str, float]]]:
    """Every job of the plan on `jobs` processes (1: in this process): experiments in plan
    order, the longest jobs of each first."""
    rank = {e.name: i for i, e in enumerate(plan.experiments)}
    todo = sorted(plan_jobs(plan), key=lambda j: (rank[j.experiment], -j.cost(plan)))
    worlds = sorted({e.world for e in plan.experiments})
    rows: list[Row] = []
    traits: dict[str, dict[str, float]] = {}
    bar = tqdm(total=len(todo) + len(worlds), desc="study", disable=not progress)
    if jobs <= 1:
        for w in worlds:
            traits[w] = world_traits(plan, w)
            bar.update()
        for job in todo:
            rows += run_job(plan, job, runs_root)
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker) as pool:
            futures = {pool.submit(run_job, plan, job, runs_root): job for job in todo}
            trait_futures = {pool.submit(world_traits, plan, w): w for w in worlds}
            for fut in as_completed([*futures, *trait_futures]):
                if fut in trait_futures:
                    traits[trait_futures[fut]] = fut.result()
                else:
                    rows += fut.result()
                bar.update()
    bar.close()
    position = {job: i for i, job in enumerate(plan_jobs(plan))}
    rows.sort(key=lambda r: position[Job(r.experiment, r.shots, r.variant, r.seed)])
    return rows, traits
