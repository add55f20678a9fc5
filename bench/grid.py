"""A training grid on N local workers against the same grid on 1: wall time and their ratio.

The grid: AAPE and its lambda = 0 twin at several seeds on a synthetic bring-your-own-features
folder (d = 512, 16 views per image), each run one Prefect task that reads its task from that
folder, trains with one torch thread and publishes its result.json. Both grids run side by side
in this one process, through the flows' own fan-out (`pipelines.evaluate.fan_out`), on worker
processes (default) or a local Ray cluster of N CPUs. Goal: ratio >= 0.8 * N.

    .venv/bin/python bench/grid.py [--workers 2] [--runs 8] [--epochs 40] [--runner ray]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

# Read when Prefect is imported: its throwaway API server starts slowly on a busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow
from prefect.task_runners import TaskRunner

from aape import grid, protocols
from aape.byof import write_task
from aape.config import TrainConfig
from aape.synthetic import make_task
from pipelines.evaluate import fan_out
from pipelines.runner import make_task_runner, shared_api


def specs_for(features: Path, runs_root: Path, runs: int, epochs: int) -> list[grid.RunSpec]:
    cfg = TrainConfig(epochs=epochs, batch_size=32, device="cpu")
    source = grid.byof_source(str(features))
    seeds = range(1, (runs + 1) // 2 + 1)
    specs = grid.run_specs(
        "few-shot", source, protocols.with_lambda0(cfg), runs_root, shots=[16], seeds=seeds
    )
    return specs[:runs]


@flow(name="bench_grid")
def bench_grid(
    features: str, runs_root: str, runs: int, epochs: int, workers: int
) -> tuple[float, float]:
    """The grid's wall time on this flow's task runner, and the runs' summed training time:
    the runs only, after one zero-shot run per worker has started the workers (process spawn,
    imports: not what a grid scales)."""
    warm = grid.run_specs(
        "few-shot",
        grid.byof_source(features),
        [TrainConfig(method="zeroshot", device="cpu")],
        Path(runs_root) / "warm-up",
        shots=[1],
        seeds=range(workers),
    )
    fan_out(warm)
    specs = specs_for(Path(features), Path(runs_root), runs, epochs)
    start = time.perf_counter()
    records = fan_out(specs)
    wall = time.perf_counter() - start
    assert len(records) == runs and all(r["complete"] for r in records)
    return wall, sum(r["train_seconds"] for r in records)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--classes", type=int, default=40)
    ap.add_argument("--runner", choices=["processes", "ray"], default="processes")
    args = ap.parse_args()
    task = make_task(n_classes=args.classes, dim=512, shots=16, views=16, n_prompts=50, seed=0)
    walls = {}
    with tempfile.TemporaryDirectory(prefix="bench-grid-") as folder, shared_api():
        tmp = Path(folder)
        features = write_task(task, tmp / "features")
        for n in (1, args.workers):
            runner = _runner(args.runner, n, tmp / f"ray-{n}")
            walls[n] = bench_grid.with_options(task_runner=runner)(
                str(features), str(tmp / f"runs-{n}"), args.runs, args.epochs, n
            )
    (one, one_train), (many, many_train) = walls[1], walls[args.workers]
    print(
        f"grid of {args.runs} runs ({args.classes} classes x 16 shots x 17 views, "
        f"{args.epochs} epochs, d=512) on {args.runner}: 1 worker {one:.1f} s "
        f"(training {one_train:.1f} s of it), {args.workers} workers {many:.1f} s (summed "
        f"training {many_train:.1f} s); ratio {one / many:.2f} (goal >= "
        f"{0.8 * args.workers:.1f}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"
    )


def _runner(kind: str, workers: int, ray_dir: Path) -> TaskRunner:
    """`workers` worker processes, or a temporary local Ray cluster of `workers` CPUs whose
    workers import this checkout (as this process does), its files under `ray_dir`."""
    if kind == "processes":
        return make_task_runner(None, threads=workers, processes=True)
    from prefect_ray import RayTaskRunner

    # No auth token written to ~/.ray (every later Ray driver of this user would read it).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray starts its workers at nice 15; the worker processes of the other runner run at 0.
    # The same priority on both sides (on a shared machine, nice 15 yields to the neighbours).
    os.environ.setdefault("RAY_worker_niceness", "0")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return RayTaskRunner(
        init_kwargs={
            "num_cpus": workers,
            "include_dashboard": False,
            "runtime_env": {"env_vars": env},
            "_temp_dir": str(ray_dir),
        }
    )


if __name__ == "__main__":
    main()
