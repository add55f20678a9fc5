"""Flow `extract_features`: frozen-CLIP image features of the images a task will read.

Which images: `aape.tasks.task_records`, the ones `aape.tasks.load_task` reads (the few-shot
train images of each seed with their augmented views, and the val/test images). The missing
(image, view) pairs are cut into shards; each shard is one task that encodes and publishes one
feature part. Threads or Ray workers, as the flow's task runner says.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from aape.data import Task
from aape.datasets import Dataset, ImageRecord, load_dataset
from aape.features import compute_feature_rows, missing_jobs, write_feature_rows
from aape.tasks import load_task, task_records, trim_eval
from pipelines.common import shards, shared_clip, short_model
from pipelines.params import BankQualityParams, FeatureParams, TrainParams
from pipelines.runner import make_task_runner

Job = tuple[ImageRecord, list[int]]


def sized_dataset(name: str, data_root: str | None, max_eval_images: int | None) -> Dataset:
    """The dataset, with at most `max_eval_images` per class in val and test when given."""
    return trim_eval(load_dataset(name, data_root), max_eval_images)


def drawn_task(params: TrainParams | BankQualityParams) -> Task:
    """The few-shot task of one draw (`params.shots`, `params.seed`) on the domain's bank."""
    return load_task(
        dataset=sized_dataset(params.dataset, params.data_root, params.max_eval_images),
        home=params.home,
        clip=shared_clip(params.clip),
        bank_domain=params.domain,
        shots=params.shots,
        seed=params.seed,
        n_views=params.n_views,
    )


@task(cache_policy=NO_CACHE)
def plan_jobs(params: FeatureParams) -> dict[str, Any]:
    """The (image, views) jobs not cached yet, and how many feature rows already are."""
    ds = load_dataset(params.dataset, params.data_root)
    clip = shared_clip(params.clip)
    records = task_records(
        ds,
        shots=params.shots,
        seeds=params.seeds,
        max_eval_images=params.max_eval_images,
        splits=params.splits,
    )
    jobs, cached = missing_jobs(records, params.home, clip.model_id, ds.name, params.n_views)
    return {
        "dataset": ds.name,
        "model_id": clip.model_id,
        "images": len(records),
        "jobs": jobs,
        "cached": cached,
    }


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def feature_shard(jobs: list[Job], dataset: str, params: FeatureParams) -> dict[str, Any]:
    """Encode one shard and publish it (I/O: retried; a retry recomputes only this shard)."""
    result = compute_feature_rows(
        jobs,
        shared_clip(params.clip),
        dataset=dataset,
        batch_size=params.batch_size,
        progress=False,
    )
    write_feature_rows(params.home, result.table)
    return {"rows": result.table.num_rows, "images": result.images, "unreadable": result.unreadable}


def _run_name() -> str:
    params: FeatureParams = flow_run.parameters["params"]
    return f"features-{params.dataset}-{short_model(params.clip)}"


@flow(name="extract_features", flow_run_name=_run_name, task_runner=make_task_runner())
def extract_features(params: FeatureParams) -> dict[str, Any]:
    """Cache the missing features; a second run finds nothing to do."""
    plan = plan_jobs(params)
    done = feature_shard.map(
        shards(plan["jobs"], params.shard_size), unmapped(plan["dataset"]), unmapped(params)
    ).result()
    unreadable = [path for d in done for path in d["unreadable"]]
    return {
        "dataset": plan["dataset"],
        "model_id": plan["model_id"],
        "images": plan["images"],
        "cached_rows": plan["cached"],
        "computed_rows": sum(d["rows"] for d in done),
        "unreadable": unreadable,
        "shards": len(done),
    }
