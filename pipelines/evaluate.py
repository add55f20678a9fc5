"""Flow `evaluate`: the few-shot protocol for AAPE, its lambda = 0 twin and the baselines, then
the report (Markdown, CSV, plots). Complete runs are read back, not redone."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from aape.config import TrainConfig
from aape.data import Task
from aape.protocols import few_shot, with_lambda0
from aape.report import write_report
from aape.tasks import load_task
from pipelines.common import shared_clip, short_model
from pipelines.features import sized_dataset
from pipelines.params import EvaluateParams
from pipelines.train import runs_root

# What a flow returns of each run record: enough for a table, not the per-class lists.
SUMMARY_KEYS = ("method", "shots", "seed", "acc1", "mean_per_class_recall", "n_images", "model_id")


def configs(params: EvaluateParams) -> list[TrainConfig]:
    """AAPE, AAPE with lambda = 0, and each baseline (sharing the AAPE config's other fields)."""
    return with_lambda0(params.config) + [
        params.config.model_copy(update={"method": b}) for b in params.baselines
    ]


@task(cache_policy=NO_CACHE)
def run_few_shot(params: EvaluateParams) -> list[dict[str, Any]]:
    ds = sized_dataset(params.dataset, params.data_root, params.max_eval_images)
    clip = shared_clip(params.clip)

    def make_task(shots: int, seed: int) -> Task:
        return load_task(
            dataset=ds,
            home=params.home,
            clip=clip,
            bank_domain=params.domain,
            shots=shots,
            seed=seed,
            n_views=params.n_views,
        )

    records = few_shot(
        make_task,
        ds.name,
        configs(params),
        runs_root(params.home, params.domain),
        shots=params.shots,
        seeds=params.seeds,
        force=params.force,
        progress=params.progress,
    )
    return [{k: r.get(k) for k in SUMMARY_KEYS} | {"health": r.get("health", {})} for r in records]


@task(cache_policy=NO_CACHE)
def report(params: EvaluateParams) -> dict[str, str]:
    paths = write_report(runs_root(params.home, params.domain))
    return {name: str(path) for name, path in paths.items()}


def _run_name() -> str:
    params: EvaluateParams = flow_run.parameters["params"]
    return f"evaluate-{params.domain}-{params.dataset}-{short_model(params.clip)}"


@flow(name="evaluate", flow_run_name=_run_name)
def evaluate(params: EvaluateParams) -> dict[str, Any]:
    """Run (or read back) every method at every (shots, seed); write the report."""
    runs = run_few_shot(params)
    return {"runs": runs, "report": report(params)}
