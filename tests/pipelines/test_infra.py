"""The services of infra/, started by their own scripts on this machine: a Prefect server (+ a
worker, + the prefect.yaml deployments) on loopback, and a local Ray cluster.

Each test starts what it needs in its own process group and stops exactly those processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from ports import free_port

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"

pytestmark = pytest.mark.integration


def wait_for(
    check: Callable[[], Any], what: str, timeout: float, proc: subprocess.Popen | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}")
        try:
            result = check()
        except httpx.HTTPError:
            result = None
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"{what}: not ready after {timeout} s")


@contextmanager
def service(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A script in its own session; on exit its whole process group gets SIGTERM (then KILL)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def test_prefect_server_runs_build_domain_and_the_yaml_deployments(
    tiny_domain, home: Path, tmp_path: Path
) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PORT=str(port), PREFECT_HOME=str(tmp_path / "prefect-home"))
    with service(["bash", "infra/prefect/start-server.sh"], env, tmp_path / "server.log") as server:
        wait_for(
            lambda: httpx.get(f"{api}/health", timeout=2).json() is True,
            "prefect server",
            120,
            server,
        )
        client_env = {**env, "PREFECT_API_URL": api}

        # build_domain through the CLI, as a user would, with the server configured.
        tiny_domain.import_bank(home)
        cli = [
            str(VENV_BIN / "aape"),
            "build-domain",
            "--spec",
            str(tiny_domain.spec),
            "--dataset",
            "folder",
            "--data-root",
            str(tiny_domain.images),
            "--home",
            str(home),
            "--no-generate",
            "--shots",
            "2",
            "--views",
            "1",
            "--no-train",
        ]
        done = subprocess.run(
            cli, cwd=REPO, env=client_env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
        states = {r["name"]: r["state_type"] for r in runs}
        assert states["build-tiny-textures-folder-aape-tiny"] == "COMPLETED"
        assert states["embed-tiny-textures-aape-tiny"] == "COMPLETED"  # subflows are runs too

        # A worker with its pool, then the deployments of prefect.yaml on that pool.
        with service(
            ["bash", "infra/prefect/start-worker.sh"], client_env, tmp_path / "worker.log"
        ) as worker:
            wait_for(
                lambda: httpx.get(f"{api}/work_pools/aape", timeout=2).status_code == 200,
                "work pool",
                120,
                worker,
            )
            deploy = [
                str(VENV_BIN / "prefect"),
                "--no-prompt",
                "deploy",
                "--all",
                "--prefect-file",
                "infra/prefect/prefect.yaml",
            ]
            done = subprocess.run(
                deploy, cwd=REPO, env=client_env, capture_output=True, text=True, timeout=180
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            workers = wait_for(
                lambda: httpx.post(
                    f"{api}/work_pools/aape/workers/filter", json={}, timeout=2
                ).json(),
                "worker heartbeat",
                60,
                worker,
            )
            assert workers[0]["status"] == "ONLINE"
        deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
        by_name = {d["name"]: d for d in deployments}
        assert (
            by_name["refresh-bank-textile-defects"]["schedules"][0]["schedule"]["cron"]
            == "0 3 * * *"
        )
        assert by_name["retrain-textile-defects"]["schedules"][0]["schedule"]["cron"] == "0 4 * * 0"
        assert by_name["retrain-textile-defects"]["work_pool_name"] == "aape"
        assert by_name["retrain-textile-defects"]["parameters"]["params"]["train"] is True
        grid_run = by_name["grid-textile-defects"]
        assert grid_run["entrypoint"] == "pipelines/evaluate.py:evaluate_grid"
        assert not grid_run["schedules"]  # on demand


def _embeddings(home: Path) -> dict[str, np.ndarray]:
    from prompt_banks.paths import banks_dir
    from prompt_banks.store import BankStore

    with BankStore(banks_dir(home)).connect() as con:
        rows = con.execute("SELECT text_hash, embedding FROM embeddings").fetchall()
    return {h: np.asarray(e, dtype=np.float32) for h, e in rows}


@pytest.mark.usefixtures("prefect_api")
def test_embed_bank_on_a_local_ray_cluster_equals_one_process(
    tiny_domain, tmp_path: Path, ray_cluster: str
) -> None:
    from pipelines.embed import embed_bank
    from pipelines.params import EmbedParams
    from pipelines.runner import make_task_runner
    from prompt_banks.clip import CLIPRef, load_clip
    from prompt_banks.embed import embed_domain
    from prompt_banks.paths import banks_dir
    from prompt_banks.store import BankStore

    # The reference: the library in this process, no Prefect, no Ray.
    single, sharded = tmp_path / "single", tmp_path / "ray"
    for h in (single, sharded):
        tiny_domain.import_bank(h)
    embed_domain(
        BankStore(banks_dir(single)),
        tiny_domain.domain,
        load_clip(CLIPRef("aape-tiny")),
        progress=False,
    )
    report = embed_bank.with_options(task_runner=make_task_runner(ray_cluster))(
        EmbedParams(domain=tiny_domain.domain, home=str(sharded), shard_size=7)
    )
    assert report["shards"] == 4 and report["written"] == 27  # 27 texts in shards of 7
    a, b = _embeddings(single), _embeddings(sharded)
    assert a.keys() == b.keys() and len(a) == 27
    for key, vector in a.items():
        np.testing.assert_allclose(b[key], vector, atol=1e-5)
