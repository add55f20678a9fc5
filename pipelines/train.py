"""Flow `train`: train AAPE on one few-shot draw and export the inference artifact.

The checkpoint lands in the few-shot protocol's run folder for this (config, shots, seed), so
the `evaluate` flow resumes it (zero epochs) instead of training it again, and a re-run of this
flow loads the finished checkpoint rather than retraining.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from aape.artifact import export_artifact
from aape.protocols import inputs_of, run_dir
from aape.train import train as train_model
from pipelines.common import clip_ref, shared_clip, short_model
from pipelines.features import drawn_task
from pipelines.params import TrainParams
from prompt_banks.errors import UserError
from prompt_banks.paths import artifacts_dir, runs_dir


def runs_root(home: str | None, domain: str) -> Path:
    """Runs of one bank domain; two domains on one dataset never share a run folder."""
    return runs_dir(home) / domain


def artifact_dir(params: TrainParams, task_name: str) -> Path:
    cfg = params.config
    return (
        artifacts_dir(params.home)
        / params.domain
        / f"{task_name}-{cfg.tag()}-k{params.shots}-s{params.seed}"
    )


@task(cache_policy=NO_CACHE)
def train_and_export(params: TrainParams) -> dict[str, Any]:
    if params.config.method != "aape":
        raise UserError(
            f"config method: '{params.config.method}' has no artifact; the train flow trains aape"
        )
    task = drawn_task(params)
    cfg = params.config.model_copy(update={"seed": params.seed})
    folder = run_dir(
        runs_root(params.home, params.domain),
        "few-shot",
        task.name,
        cfg,
        f"k{params.shots}-s{params.seed}",
        inputs_of(task),
    )
    result = train_model(task, cfg, checkpoint_dir=folder, progress=params.progress)
    out = export_artifact(result, artifact_dir(params, task.name), clip_ref=clip_ref(params.clip))
    return {
        "artifact": str(out),
        "checkpoint": str(result.checkpoint),
        "method": cfg.tag(),
        "health": result.health,
        "train_seconds": result.train_seconds,
        "untrained_clip": shared_clip(params.clip).untrained,
    }


def _run_name() -> str:
    params: TrainParams = flow_run.parameters["params"]
    what = f"{params.domain}-{params.dataset}-{short_model(params.clip)}"
    return f"train-{what}-k{params.shots}-s{params.seed}"


@flow(name="train", flow_run_name=_run_name)
def train(params: TrainParams) -> dict[str, Any]:
    """Train AAPE (features and bank must be in the stores; missing features are extracted)."""
    return train_and_export(params)
