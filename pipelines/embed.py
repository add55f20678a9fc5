"""Flow `embed_bank`: CLIP text embeddings of every description of a domain not embedded yet.

The texts still to embed are cut into shards; each shard is one task that embeds its texts and
appends one store file. The flow's task runner decides where shards run (threads here, Ray
workers with `pipelines.runner.make_task_runner(address)`); the store must be reachable from
every worker (a shared folder or an object-store URL).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from pipelines.common import shards, shared_clip, short_model
from pipelines.params import EmbedParams
from pipelines.runner import make_task_runner
from prompt_banks import snapshots
from prompt_banks.embed import domain_texts, embed_texts_to_rows, pending_texts
from prompt_banks.paths import banks_dir
from prompt_banks.store import BankStore


@task(cache_policy=NO_CACHE)
def plan_texts(params: EmbedParams) -> dict[str, Any]:
    """The domain's texts and those still missing for this CLIP (refuses a dimension clash)."""
    store = BankStore(banks_dir(params.home))
    clip = shared_clip(params.clip)
    store.check_model_dim(clip.model_id, clip.dim)
    texts = domain_texts(store, params.domain)
    return {
        "model_id": clip.model_id,
        "texts": len(texts),
        "todo": pending_texts(store, texts, clip.model_id),
    }


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def embed_shard(texts: list[str], params: EmbedParams) -> int:
    """Embed one shard and append it to the store (I/O: retried; a retry re-writes nothing that
    landed, the store skips stored (text, model) pairs)."""
    rows = embed_texts_to_rows(shared_clip(params.clip), texts, params.batch_size)
    return BankStore(banks_dir(params.home)).append_embeddings(rows)


@task(cache_policy=NO_CACHE)
def record_snapshot(params: EmbedParams, model_id: str) -> str:
    """Record the bank as training will read it (`aape bank history`); returns its id."""
    return snapshots.take(BankStore(banks_dir(params.home)), params.domain, model_id).id


def _run_name() -> str:
    params: EmbedParams = flow_run.parameters["params"]
    return f"embed-{params.domain}-{short_model(params.clip)}"


@flow(name="embed_bank", flow_run_name=_run_name, task_runner=make_task_runner())
def embed_bank(params: EmbedParams) -> dict[str, Any]:
    """Embed what is missing; a second run finds nothing to do."""
    plan = plan_texts(params)
    todo: list[str] = plan["todo"]
    written = embed_shard.map(shards(todo, params.shard_size), unmapped(params)).result()
    snapshot = record_snapshot(params, plan["model_id"])
    return {
        "snapshot": snapshot,
        "domain": params.domain,
        "model_id": plan["model_id"],
        "texts": plan["texts"],
        "already": plan["texts"] - len(todo),
        "encoded": len(todo),
        "written": sum(written),
        "shards": len(written),
    }
