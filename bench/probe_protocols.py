"""The linear-probe baseline on the CLIP-like simulation: the standard protocol vs the old probe.

Same world, same K-shot training images, same test images, in one run:
- "lbfgs": CLIP's / CLIP_benchmark's protocol (scikit-learn L-BFGS logistic regression on the
  centre-crop features, C swept on the validation split, refit), the default `linear_probe`;
- "adamw": the earlier probe (full-batch AdamW from zero-shot weights, lr 1e-2, 300 steps),
  `--set probe_solver=adamw`.
It prints top-1 test accuracy (mean over seeds) of both, their difference, and the C chosen.

    .venv/bin/python bench/probe_protocols.py              # the study's world: d 512, 100 classes
    .venv/bin/python bench/probe_protocols.py --small      # d 64, 12 classes (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from aape import simulation as sim
from aape.byof import select_shots
from aape.config import TrainConfig
from aape.evaluate import evaluate
from aape.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="the tiny test world")
    ap.add_argument("--shots", default="1,2,4,8,16")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--world-seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    world = sim.simulate(
        sim.small_config() if args.small else sim.SimConfig(), seed=args.world_seed
    )
    shots = [int(k) for k in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"world: {world.task.name}, d={world.task.texts.dim}, {len(world.task.texts.names)} "
          f"classes, val {world.task.val.n_images} images, seeds {seeds}")  # fmt: skip
    print("| K | lbfgs acc1 | adamw acc1 | lbfgs - adamw | C chosen (per seed) | lbfgs s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k in shots:
        acc: dict[str, list[float]] = {"lbfgs": [], "adamw": []}
        chosen, seconds = [], 0.0
        for seed in seeds:
            task = select_shots(world.task, k, seed)
            for solver in acc:
                cfg = TrainConfig(method="linear_probe", probe_solver=solver, seed=seed)
                start = time.perf_counter()
                result = train(task, cfg, progress=False)
                if solver == "lbfgs":
                    seconds += time.perf_counter() - start
                    chosen.append(f"{result.probe['C']:.3g}")
                acc[solver].append(evaluate(result.classifier, task.test, task.texts)["acc1"])
        lb, aw = (100 * statistics.mean(acc[s]) for s in ("lbfgs", "adamw"))
        print(f"| {k} | {lb:.2f} | {aw:.2f} | {lb - aw:+.2f} | {', '.join(chosen)} | "
              f"{seconds / len(seeds):.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
