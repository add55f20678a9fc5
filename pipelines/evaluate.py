"""Flows `evaluate` (one dataset) and `evaluate_grid` (many): every (dataset, shots, seed,
method) is one mapped task, then the report.

`plan_runs` lists the runs (`aape.grid.run_specs`) and extracts, once, the features they read;
`run_one` executes one run on whatever the flow's task runner is (threads, worker processes, a
Ray worker with the run's CPUs and GPUs requested). A run gets its spec, never tensors: the
worker reads its task from the stores. Complete runs are read back, not redone, so a killed grid
resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run, task_run

from aape import grid
from aape.baselines import baseline_config
from aape.config import TrainConfig
from aape.protocols import with_lambda0
from aape.report import write_combined_report, write_report
from pipelines.common import clip_ref, short_model
from pipelines.params import EvaluateParams, GridDataset, GridParams
from pipelines.runner import make_task_runner, run_resources
from pipelines.train import runs_root
from prompt_banks.paths import runs_dir

# What a flow returns of each run record: enough for a table, not the per-class lists.
SUMMARY_KEYS = ("method", "shots", "seed", "acc1", "mean_per_class_recall", "n_images", "model_id")


def method_configs(
    config: TrainConfig, baselines: tuple[str, ...], lambda0: bool = True
) -> list[TrainConfig]:
    """AAPE (with its lambda = 0 twin), and each baseline sharing the AAPE config's fields."""
    cfgs = with_lambda0(config) if lambda0 else [config]
    return cfgs + [baseline_config(config, b) for b in baselines]


def as_grid(params: EvaluateParams) -> GridParams:
    """The one-dataset grid of an `evaluate` run (the few-shot protocol)."""
    fields = params.model_dump(exclude={"dataset", "domain"})
    return GridParams(
        datasets=(GridDataset(dataset=params.dataset, domain=params.domain),), **fields
    )


def grid_specs(params: GridParams) -> list[grid.RunSpec]:
    """Every run of the grid, dataset by dataset, in each protocol's serial order."""
    cfgs = method_configs(params.config, params.baselines, params.lambda0)
    common = dict(
        home=params.home,
        clip=clip_ref(params.clip),
        max_eval_images=params.max_eval_images,
        max_missing=params.max_missing,
    )
    # A target's train split is never read (`grid.TARGET_DRAW`): no views, any class size.
    targets = [
        grid.dataset_source(
            t.dataset, data_root=t.data_root or params.data_root, bank_domain=t.domain,
            n_views=0, shots_policy="all-available", **common,
        )
        for t in params.targets
    ]  # fmt: skip
    specs: list[grid.RunSpec] = []
    for item in params.datasets:
        source = grid.dataset_source(
            item.dataset, data_root=item.data_root or params.data_root, bank_domain=item.domain,
            n_views=params.n_views, shots_policy=params.shots_policy, **common,
        )  # fmt: skip
        specs += grid.run_specs(
            params.protocol,
            source,
            cfgs,
            runs_root(params.home, item.domain),
            shots=params.shots,
            seeds=params.seeds,
            targets=targets,
        )
    return specs


@task(cache_policy=NO_CACHE)
def plan_runs(params: GridParams) -> list[grid.RunSpec]:
    """The grid's runs, with the features they read extracted (the runs then only read)."""
    specs = grid_specs(params)
    grid.prepare(specs, progress=params.progress)
    return specs


def _run_name() -> str:
    spec: grid.RunSpec = task_run.parameters["spec"]
    return f"run-{spec.label().replace(' ', '-')}"


@task(cache_policy=NO_CACHE, task_run_name=_run_name)
def run_one(spec: grid.RunSpec, force: bool, threads: int | None) -> dict[str, Any]:
    """Train and test one run, or read back its complete record."""
    return grid.execute(spec, force=force, threads=threads)


def fan_out(
    specs: list[grid.RunSpec], *, force: bool = False, cpus: float = 1.0, gpus: float = 0.0
) -> list[dict[str, Any]]:
    """One mapped task per run, each asking for `cpus` and `gpus` on Ray; the records in spec
    order. Call it inside a flow: the flow's task runner runs the tasks."""
    with run_resources(cpus, gpus) as threads:
        futures = run_one.map(specs, unmapped(force), unmapped(threads))
    return futures.result()


def _fan_out(specs: list[grid.RunSpec], params: GridParams) -> list[dict[str, Any]]:
    return fan_out(specs, force=params.force, cpus=params.cpus_per_run, gpus=params.gpus_per_run)


def summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: r.get(k) for k in ("task", *SUMMARY_KEYS)} | {"health": r.get("health", {})}
        for r in records
    ]


@task(cache_policy=NO_CACHE)
def report(params: EvaluateParams) -> dict[str, str]:
    paths = write_report(runs_root(params.home, params.domain))
    return {name: str(path) for name, path in paths.items()}


@task(cache_policy=NO_CACHE)
def combined_report(records: list[dict[str, Any]], out_dir: str) -> dict[str, str]:
    paths = write_combined_report(records, out_dir)
    return {name: str(path) for name, path in paths.items()}


def report_dir(params: GridParams) -> Path:
    return Path(params.report_dir) if params.report_dir else runs_dir(params.home) / "grid-report"


def _evaluate_name() -> str:
    params: EvaluateParams = flow_run.parameters["params"]
    return f"evaluate-{params.domain}-{params.dataset}-{short_model(params.clip)}"


@flow(name="evaluate", flow_run_name=_evaluate_name, task_runner=make_task_runner())
def evaluate(params: EvaluateParams) -> dict[str, Any]:
    """Run (or read back) every method at every (shots, seed), one task each; the report."""
    grid_params = as_grid(params)
    records = _fan_out(plan_runs(grid_params), grid_params)
    return {"runs": summary(records), "report": report(params)}


def _grid_name() -> str:
    params: GridParams = flow_run.parameters["params"]
    names = "-".join(d.dataset for d in params.datasets[:3])
    more = f"-and-{len(params.datasets) - 3}" if len(params.datasets) > 3 else ""
    return f"grid-{params.protocol}-{names}{more}-{short_model(params.clip)}"


@flow(name="evaluate_grid", flow_run_name=_grid_name, task_runner=make_task_runner())
def evaluate_grid(params: GridParams) -> dict[str, Any]:
    """Every run of a grid over many datasets, one task each; one combined report."""
    records = _fan_out(plan_runs(params), params)
    return {
        "runs": summary(records),
        "report": combined_report(records, str(report_dir(params))),
    }
