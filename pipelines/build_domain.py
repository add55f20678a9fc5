"""Flow `build_domain`: one domain spec and one dataset, end to end.

generate_descriptions -> embed_bank -> extract_features -> bank_quality -> train -> evaluate,
each a subflow (its own run in the UI, named after what it ran). Every stage skips what its
store already holds, so a re-run with nothing new computes nothing and finishes in seconds. A
stage that fails (no LLM answering, too many failed rows) fails the run before the later stages
start.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from pipelines.bank_quality import bank_quality
from pipelines.common import short_model
from pipelines.embed import embed_bank
from pipelines.evaluate import evaluate
from pipelines.features import extract_features
from pipelines.generate import generate_descriptions
from pipelines.params import (
    BankQualityParams,
    BuildDomainParams,
    EmbedParams,
    EvaluateParams,
    FeatureParams,
    GenerateParams,
    TrainParams,
    resolve_spec,
)
from pipelines.runner import make_task_runner
from pipelines.train import train


def _run_name() -> str:
    params: BuildDomainParams = flow_run.parameters["params"]
    spec = resolve_spec(params.spec)
    clip = params.clip or spec.clip
    return f"build-{spec.domain}-{params.dataset}-{short_model(clip)}"


@flow(name="build_domain", flow_run_name=_run_name)
def build_domain(params: BuildDomainParams, ray_address: str | None = None) -> dict[str, Any]:
    """Bank, features, AAPE and the baselines for `params.spec` on `params.dataset`.

    The features cover every (shots, seed) draw; the artifact is exported for the first one,
    and the evaluation runs them all. `ray_address` (else $AAPE_RAY_ADDRESS) sends the embedding
    and feature shards to a Ray cluster; without one they run on local threads."""
    spec = resolve_spec(params.spec)
    clip = params.clip or spec.clip
    common = {"home": params.home}
    out: dict[str, Any] = {
        "domain": spec.domain,
        "dataset": params.dataset,
        "clip": clip.model_dump(),
    }
    if params.generate:
        out["generate"] = generate_descriptions(
            GenerateParams(
                spec=params.spec,
                llm=params.llm,
                max_failed_share=params.max_failed_share,
                progress=params.progress,
                **common,
            )
        )
    out["embed"] = embed_bank.with_options(task_runner=make_task_runner(ray_address))(
        EmbedParams(domain=spec.domain, clip=clip, **common)
    )
    sizing = {
        "dataset": params.dataset,
        "data_root": params.data_root,
        "clip": clip,
        "n_views": params.n_views,
        "max_eval_images": params.max_eval_images,
        **common,
    }
    out["features"] = extract_features.with_options(task_runner=make_task_runner(ray_address))(
        FeatureParams(shots=max(params.shots), seeds=params.seeds, **sizing)
    )
    out["bank_quality"] = bank_quality(
        BankQualityParams(domain=spec.domain, shots=params.shots[0], seed=params.seeds[0], **sizing)
    )
    if params.train:
        out["train"] = train(
            TrainParams(
                domain=spec.domain,
                shots=params.shots[0],
                seed=params.seeds[0],
                config=params.config,
                progress=params.progress,
                **sizing,
            )
        )
        out["evaluate"] = evaluate(
            EvaluateParams(
                domain=spec.domain,
                shots=params.shots,
                seeds=params.seeds,
                config=params.config,
                baselines=params.baselines,
                progress=params.progress,
                **sizing,
            )
        )
    return out
