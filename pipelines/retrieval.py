"""Flow `retrieval`: caption files to a retrieval table, end to end.

import_captions (each source) -> embed (caption texts + image features, each dataset) ->
train (AAPE, and AAPE with lambda = 0 as the baseline) -> evaluate (each test dataset: CLIP
zero-shot, both artifacts). Every stage skips what its store already holds; the work itself is
`aape.vl.run`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from aape.vl.config import RetrievalConfig
from aape.vl.run import embed_dataset, evaluate_dataset, import_captions, train_dataset
from pipelines.common import clip_ref, short_model
from prompt_banks.spec import CLIPSettings


class CaptionSource(BaseModel):
    """One caption file, as `aape vl import-captions` takes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str  # karpathy | coco | csv | jsonl
    file: str
    images: str | None = None
    name: str | None = None
    split: str | None = None
    restval: str = "train"  # Karpathy COCO: train | drop


class RetrievalParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    home: str | None = None  # a local folder: runs and artifacts are written there
    sources: list[CaptionSource] = Field(default_factory=list)  # imported first (may be none)
    train_dataset: str
    test_datasets: list[str]
    clip: CLIPSettings = CLIPSettings()
    config: RetrievalConfig = RetrievalConfig()
    lambda0_baseline: bool = True  # also train lambda = 0, the same config otherwise
    n_views: int = Field(0, ge=0)  # augmented views per training image
    max_missing: int = Field(0, ge=0)  # missing/unreadable images left out (0: any fails)
    out: str | None = None  # results folder (default: <home>/runs/retrieval/flow-<train>)
    progress: bool = False


@task(cache_policy=NO_CACHE)
def import_source(source: CaptionSource, home: str | None) -> dict[str, Any]:
    return import_captions(
        source.format,
        source.file,
        home=home,
        images=source.images,
        name=source.name,
        split=source.split,
        restval=source.restval,
    ).to_dict()


@task(cache_policy=NO_CACHE)
def embed(dataset: str, params: RetrievalParams) -> dict[str, Any]:
    return embed_dataset(
        dataset,
        clip_ref(params.clip),
        home=params.home,
        n_views=params.n_views,
        max_missing=params.max_missing,
        progress=params.progress,
    )


@task(cache_policy=NO_CACHE)
def train(cfg: RetrievalConfig, params: RetrievalParams) -> dict[str, Any]:
    run = train_dataset(
        params.train_dataset, clip_ref(params.clip), cfg, home=params.home, progress=params.progress
    )
    return {
        "method": run.result.config.tag(),
        "health": run.result.health,
        "train_seconds": run.result.train_seconds,
        "artifact": str(run.artifact),
    }


@task(cache_policy=NO_CACHE)
def evaluate(dataset: str, artifacts: list[str], params: RetrievalParams) -> dict[str, Any]:
    out = Path(params.out) / dataset if params.out else None
    rows, paths = evaluate_dataset(
        dataset, clip_ref(params.clip), home=params.home, artifacts=artifacts, out=out
    )
    return {
        "rows": [{"method": r.method, "setting": r.setting, **r.metrics} for r in rows],
        "json": str(paths["json"]),
        "markdown": str(paths["markdown"]),
    }


def _run_name() -> str:
    params: RetrievalParams = flow_run.parameters["params"]
    return f"retrieval-{params.train_dataset}-{short_model(params.clip)}"


@flow(name="retrieval", flow_run_name=_run_name)
def retrieval(params: RetrievalParams) -> dict[str, Any]:
    """Import, embed, train (AAPE and lambda = 0), evaluate on every test dataset."""
    out: dict[str, Any] = {"imported": [import_source(s, params.home) for s in params.sources]}
    datasets = list(dict.fromkeys([params.train_dataset, *params.test_datasets]))
    out["embed"] = {d: embed(d, params) for d in datasets}
    configs = [params.config]
    if params.lambda0_baseline and params.config.lambda_distill:
        configs.append(params.config.model_copy(update={"lambda_distill": 0.0}))
    out["train"] = [train(cfg, params) for cfg in configs]
    artifacts = [t["artifact"] for t in out["train"]]
    out["evaluate"] = {d: evaluate(d, artifacts, params) for d in params.test_datasets}
    return out
