"""Scheduled deployments of `build_domain` for one domain: refresh the bank, retrain.

- `refresh-bank-<domain>`: generate what is missing, embed it, cache features (daily by default);
  with nothing new it finishes in seconds.
- `retrain-<domain>`: the whole build, training and evaluation included (weekly by default).

`aape serve` runs both with `prefect.serve` (no work pool, no worker: this process polls for the
scheduled runs); infra/prefect/prefect.yaml declares the same two for a server + worker setup.
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from pipelines.build_domain import build_domain
from pipelines.params import BuildDomainParams, resolve_spec

DEFAULT_REFRESH_CRON = "0 3 * * *"  # 03:00 every day
DEFAULT_RETRAIN_CRON = "0 4 * * 0"  # 04:00 every Sunday


def domain_deployments(
    params: BuildDomainParams,
    *,
    refresh_cron: str = DEFAULT_REFRESH_CRON,
    retrain_cron: str = DEFAULT_RETRAIN_CRON,
    timezone: str = "UTC",
) -> list[RunnerDeployment]:
    """The two scheduled deployments of one domain (parameters: `params`, `train` set per job)."""
    domain = resolve_spec(params.spec).domain
    jobs = (("refresh-bank", refresh_cron, False), ("retrain", retrain_cron, True))
    return [
        build_domain.to_deployment(
            name=f"{job}-{domain}",
            parameters={
                "params": params.model_copy(update={"train": train}).model_dump(mode="json")
            },
            schedule=Cron(cron, timezone=timezone),
            tags=["aape", domain, job],
            description=f"{job} for domain {domain} on {params.dataset} (cron {cron} {timezone})",
        )
        for job, cron, train in jobs
    ]


def serve_domain(params: BuildDomainParams, **schedules: str) -> None:
    """Serve the domain's deployments until interrupted (Ctrl-C)."""
    serve(*domain_deployments(params, **schedules))
