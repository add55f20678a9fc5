"""Flow `extract_features`: frozen-CLIP image features of the images a task will read.

Which images: the few-shot train images of each seed (`aape.fewshot`'s manifest, the same pick
`aape.tasks.load_task` makes) with their augmented views, and the val/test images. The missing
(image, view) pairs are cut into shards; each shard is one task that encodes and publishes one
feature part. Threads or Ray workers, as the flow's task runner says.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from aape.datasets import Dataset, ImageRecord, load_dataset
from aape.features import compute_feature_rows, missing_jobs, write_feature_rows
from aape.fewshot import fewshot_manifest
from pipelines.common import shards, shared_clip, short_model
from pipelines.params import FeatureParams
from pipelines.runner import make_task_runner

Job = tuple[ImageRecord, list[int]]


def sized_dataset(name: str, data_root: str | None, max_eval_images: int | None) -> Dataset:
    """The dataset, with at most `max_eval_images` per class in val and test when given (the
    first ones in the loader's order, which is deterministic): a demo- or test-sized run."""
    ds = load_dataset(name, data_root)
    if max_eval_images is None:
        return ds
    splits = {}
    for split, records in ds.splits.items():
        if split == "train":
            splits[split] = records
            continue
        seen: dict[int, int] = {}
        kept = []
        for r in records:
            if seen.get(r.label, 0) < max_eval_images:
                seen[r.label] = seen.get(r.label, 0) + 1
                kept.append(r)
        splits[split] = kept
    return Dataset(ds.name, ds.classnames, splits, ds.description)


def selected_records(ds: Dataset, params: FeatureParams) -> list[ImageRecord]:
    """The records of `params.splits` a task reads: few-shot train picks and every eval image."""
    records: list[ImageRecord] = []
    for split in params.splits:
        if split not in ds.splits:
            continue
        if split == "train" and params.shots is not None:
            picked = set().union(
                *(
                    fewshot_manifest(
                        ds.splits["train"], params.shots, s, dataset=ds.name
                    ).selected()
                    for s in params.seeds
                )
            )
            records += [r for r in ds.splits["train"] if r.image_id in picked]
        else:
            records += ds.splits[split]
    return records


@task(cache_policy=NO_CACHE)
def plan_jobs(params: FeatureParams) -> dict[str, Any]:
    """The (image, views) jobs not cached yet, and how many feature rows already are."""
    ds = sized_dataset(params.dataset, params.data_root, params.max_eval_images)
    clip = shared_clip(params.clip)
    records = selected_records(ds, params)
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
