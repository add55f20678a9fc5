"""Flow `generate_descriptions`: ask the domain spec's LLM for every missing class description.

Every LLM request holds one slot of a Prefect global concurrency limit named after the endpoint,
so all flows in all processes (several domains regenerating at once, a worker fleet) share one
bound on what reaches that server. The limit is created with the spec's `concurrency` when it
does not exist yet; an operator can change it later (`prefect gcl update NAME --limit N`), and
this code never overwrites it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run

from pipelines.params import GenerateParams, resolve_spec
from prompt_banks.backends import make_backend, resolve_settings
from prompt_banks.backends.base import CompletionRequest
from prompt_banks.errors import UserError
from prompt_banks.generate import generate_bank
from prompt_banks.generate_report import check_failed_share
from prompt_banks.paths import banks_dir
from prompt_banks.spec import LLMSettings
from prompt_banks.store import BankStore


def llm_limit_name(settings: LLMSettings) -> str:
    """One limit per LLM endpoint: the server URL for `openai`, the model for in-process ones.
    Prefect limit names allow no '/', '%', '&', '>', '<'."""
    target = settings.base_url or settings.model_path or settings.model or "default"
    return "llm-" + re.sub(r"[^A-Za-z0-9_.:-]+", "-", f"{settings.backend}-{target}").strip("-")


def ensure_llm_limit(name: str, limit: int) -> None:
    """Create the global concurrency limit `name` with `limit` slots unless it exists."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit)
            )


def guarded(
    call: Callable[[CompletionRequest], list[str]], limit: str
) -> Callable[[CompletionRequest], list[str]]:
    """`call` holding one slot of the limit `limit` while the request is in flight."""

    def run(request: CompletionRequest) -> list[str]:
        with concurrency(limit, occupy=1, strict=True):
            return call(request)

    return run


def _is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a crashed generation (server restarting, connection reset), never a user error:
    a wrong spec, key or model fails the same way twice."""
    try:
        state.result()
    except UserError:
        return False
    except Exception:
        return True
    return False


@task(retries=2, retry_delay_seconds=20, retry_condition_fn=_is_transient, cache_policy=NO_CACHE)
def generate_task(params: GenerateParams) -> dict[str, Any]:
    """Generate the missing rows (the store's row keys make a retry resume, not repeat)."""
    spec = resolve_spec(params.spec)
    settings = resolve_settings(spec, **params.llm)
    limit = llm_limit_name(settings)
    ensure_llm_limit(limit, settings.concurrency)
    with make_backend(settings) as backend:
        report = generate_bank(
            spec,
            BankStore(banks_dir(params.home)),
            backend,
            concurrency=settings.concurrency,
            retry_failed=params.retry_failed,
            limit_classes=params.limit_classes,
            progress=params.progress,
            call=guarded(backend.complete, limit),
        )
    # Too many failed rows fail the task (a UserError: retrying would ask nothing, since the
    # failed rows are stored) and with it the flow, with the counts and reasons as its message.
    check_failed_share(
        report,
        params.max_failed_share,
        again="a run with retry_failed=true",
        setting="max_failed_share",
    )
    return {**report.__dict__, "llm_limit": limit, "summary": report.summary()}


def _run_name() -> str:
    params: GenerateParams = flow_run.parameters["params"]
    spec = resolve_spec(params.spec)
    llm = resolve_settings(spec, **params.llm)
    return f"generate-{spec.domain}-{llm.backend}-{llm.model or 'default'}"


@flow(name="generate_descriptions", flow_run_name=_run_name)
def generate_descriptions(params: GenerateParams) -> dict[str, Any]:
    """Ask the spec's LLM for every description the store lacks; failures are stored as rows.
    Ends Failed when no LLM answers (before any request) or when more than
    `params.max_failed_share` of the rows asked for failed."""
    return generate_task(params)
