"""Where a flow's tasks run: a Ray cluster when an address is configured, local threads (or
processes) otherwise.

The flows never branch on this: they submit or map tasks, and the task runner chosen here decides
whether a shard runs on a thread of this process, in a worker process, or on a Ray worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

# `AAPE_RAY_ADDRESS=127.0.0.1:6379` (a `ray start --head` cluster, see infra/ray/) or
# `ray://host:10001` (Ray client) sends the shards of every flow in this process to that cluster.
RAY_ADDRESS_ENV = "AAPE_RAY_ADDRESS"
# Shards of CPU-bound torch work: more threads than cores only adds contention.
DEFAULT_THREADS = max(1, min(4, os.cpu_count() or 1))


def ray_address(explicit: str | None = None) -> str | None:
    """The configured Ray address: `explicit`, else $AAPE_RAY_ADDRESS, else None (no Ray)."""
    return explicit or os.environ.get(RAY_ADDRESS_ENV) or None


def make_task_runner(
    address: str | None = None, *, threads: int = DEFAULT_THREADS, processes: bool = False
) -> TaskRunner:
    """`RayTaskRunner(address=...)` when a Ray address is configured, else a pool of `threads`
    threads, or of that many worker processes with `processes` (training holds the GIL between
    torch calls: runs of small models scale only across processes)."""
    resolved = ray_address(address)
    if resolved is None:
        if processes:
            return ProcessPoolTaskRunner(max_workers=threads)
        return ThreadPoolTaskRunner(max_workers=threads)
    from prefect_ray import RayTaskRunner  # the [ray] extra; imported only when asked for

    return RayTaskRunner(address=resolved)


def _on_ray(runner: TaskRunner | None) -> bool:
    return runner is not None and type(runner).__module__.startswith("prefect_ray")


@contextmanager
def run_resources(cpus: float, gpus: float) -> Iterator[int | None]:
    """Resource requests for the tasks submitted in the block, on the current flow's runner.

    On Ray: `prefect_ray`'s `remote_options(num_cpus=..., num_gpus=...)`, so the cluster
    schedules each run where its CPUs and GPUs are free. Yields the torch threads each run
    should use: its CPUs on Ray and in worker processes (one run per process at a time), None
    on a thread pool (the runs share one process)."""
    ctx = FlowRunContext.get()
    runner = ctx.task_runner if ctx is not None else None
    threads = max(1, int(cpus))
    if _on_ray(runner):
        from prefect_ray.context import remote_options

        with remote_options(num_cpus=cpus, num_gpus=gpus):
            yield threads
    elif isinstance(runner, ProcessPoolTaskRunner):
        yield threads
    else:
        yield None


@contextmanager
def shared_api(timeout_s: int = 180) -> Iterator[None]:
    """Flows in the block, and the worker processes they spawn, report to one Prefect API.

    The configured one (PREFECT_API_URL, a profile, a test harness), else a throwaway server for
    the block; either is named to the spawned workers through $PREFECT_API_URL (else each
    worker process would start its own server, tens of seconds each on a busy machine)."""
    url = get_current_settings().api.url
    server = None
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start(timeout=timeout_s)
        url = server.api_url
    before = os.environ.get(PREFECT_API_URL.name)
    os.environ[PREFECT_API_URL.name] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        if before is None:
            os.environ.pop(PREFECT_API_URL.name, None)
        else:
            os.environ[PREFECT_API_URL.name] = before
        if server is not None:
            _drain()  # what the flows still had to say goes out before their server stops
            server.stop()


def _drain() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()
    EventsWorker.drain_all()
