"""Where a flow's tasks run: a Ray cluster when an address is configured, local threads otherwise.

The flows never branch on this: they submit or map tasks, and the task runner chosen here decides
whether a shard runs on a thread of this process or on a Ray worker.
"""

from __future__ import annotations

import os

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

# `AAPE_RAY_ADDRESS=127.0.0.1:6379` (a `ray start --head` cluster, see infra/ray/) or
# `ray://host:10001` (Ray client) sends the shards of every flow in this process to that cluster.
RAY_ADDRESS_ENV = "AAPE_RAY_ADDRESS"
# Shards of CPU-bound torch work: more threads than cores only adds contention.
DEFAULT_THREADS = max(1, min(4, os.cpu_count() or 1))


def ray_address(explicit: str | None = None) -> str | None:
    """The configured Ray address: `explicit`, else $AAPE_RAY_ADDRESS, else None (no Ray)."""
    return explicit or os.environ.get(RAY_ADDRESS_ENV) or None


def make_task_runner(address: str | None = None, *, threads: int = DEFAULT_THREADS) -> TaskRunner:
    """`RayTaskRunner(address=...)` when a Ray address is configured, else a thread pool."""
    resolved = ray_address(address)
    if resolved is None:
        return ThreadPoolTaskRunner(max_workers=threads)
    from prefect_ray import RayTaskRunner  # the [ray] extra; imported only when asked for

    return RayTaskRunner(address=resolved)
