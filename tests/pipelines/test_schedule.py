"""The scheduled deployments, without a long-running server: a Prefect `Runner` (what
`aape serve` / `flow.serve` starts) polls the session's API once and executes a due run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.runner import Runner

from pipelines.params import BuildDomainParams
from pipelines.serve import DEFAULT_REFRESH_CRON, DEFAULT_RETRAIN_CRON, domain_deployments
from prompt_banks.paths import banks_dir
from prompt_banks.store import BankStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def test_runner_executes_a_due_run_of_the_refresh_deployment(tiny_domain, home: Path) -> None:
    tiny_domain.import_bank(home)
    params = BuildDomainParams(
        spec=str(tiny_domain.spec),
        dataset="folder",
        data_root=str(tiny_domain.images),
        home=str(home),
        generate=False,
        shots=(2,),
        n_views=1,
        progress=False,
    )
    runner = Runner(name="aape-schedule-test", query_seconds=1)
    ids = {d.name: runner.add_deployment(d) for d in domain_deployments(params)}
    assert set(ids) == {"refresh-bank-tiny-textures", "retrain-tiny-textures"}

    with get_client(sync_client=True) as client:
        refresh = client.read_deployment(ids["refresh-bank-tiny-textures"])
        retrain = client.read_deployment(ids["retrain-tiny-textures"])
        assert [s.schedule.cron for s in refresh.schedules] == [DEFAULT_REFRESH_CRON]
        assert [s.schedule.cron for s in retrain.schedules] == [DEFAULT_RETRAIN_CRON]
        assert (
            refresh.parameters["params"]["train"] is False
            and retrain.parameters["params"]["train"] is True
        )
        # The run its cron would create at 03:00, due now.
        due = client.create_flow_run_from_deployment(refresh.id)

    asyncio.run(runner.start(run_once=True))

    with get_client(sync_client=True) as client:
        done = client.read_flow_run(due.id)
    assert done.state is not None and done.state.type == StateType.COMPLETED, done.state
    # The refresh job embedded the bank with the spec's CLIP (aape-tiny).
    assert len(BankStore(banks_dir(home)).embedded_hashes("aape-tiny/random-seed0")) == 27
