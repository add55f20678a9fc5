"""Flow `compact_stores`: merge the small parts of the bank store and the image-feature cache.

Daily regeneration appends a few parts per run; after months, every read opens hundreds of files
(a request each on object storage). This flow runs `prompt_banks.compaction` over both stores:
safe beside running readers, writers and other flows, and after a kill at any point. Parts it
replaces are deleted by the next run, once `grace_s` has passed.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from aape.cache_compaction import compact_features
from pipelines.params import CompactParams
from prompt_banks.compaction import compact_store
from prompt_banks.paths import banks_dir
from prompt_banks.store import BankStore


@task(cache_policy=NO_CACHE)
def compact_bank(params: CompactParams) -> list[dict[str, Any]]:
    """Compact the bank store's descriptions, embeddings and snapshots."""
    reports = compact_store(BankStore(banks_dir(params.home)), grace_s=params.grace_s)
    return [r.to_dict() for r in reports]


@task(cache_policy=NO_CACHE)
def compact_cache(params: CompactParams) -> list[dict[str, Any]]:
    """Compact every split folder of the feature cache."""
    return [r.to_dict() for r in compact_features(params.home, grace_s=params.grace_s)]


@flow(name="compact_stores", flow_run_name="compact-stores")
def compact_stores(params: CompactParams) -> dict[str, Any]:
    """Compact the stores under `params.home`; returns the per-folder reports."""
    out: dict[str, Any] = {"bank": compact_bank(params)}
    if params.features:
        out["features"] = compact_cache(params)
    return out
