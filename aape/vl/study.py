"""The retrieval study in the caption world: AAPE against CLIP zero-shot and lambda = 0.

Rows: zero-shot transfer (trained on the coco-like domain, tested on the flickr-like one),
fine-tuned (trained and tested on flickr-like), and in-domain (coco-like on coco-like); for
each, CLIP zero-shot (the image embedding as the query), and AAPE with lambda = 0 and with the
paper's lambda = 5, for both query switches (`h`, the paper's reading, and `residual`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from tqdm.auto import tqdm

from aape.vl.config import RetrievalConfig
from aape.vl.evaluate import RetrievalRow, evaluate_split
from aape.vl.simulation import CaptionWorldConfig, simulate_captions
from aape.vl.train import RetrievalResult, train_retrieval

SETTINGS = (("transfer", "coco", "flickr"), ("fine-tuned", "flickr", "flickr"),
            ("in-domain", "coco", "coco"))  # fmt: skip


def method_configs(base: RetrievalConfig) -> dict[str, RetrievalConfig]:
    out = {"clip-zeroshot": base.model_copy(update={"method": "zeroshot"})}
    for query in ("h", "residual"):
        for lam in (0.0, base.lambda_distill):
            out[f"aape-{query}-lam{lam:g}"] = base.model_copy(
                update={"query": query, "lambda_distill": lam}
            )
    return out


def retrieval_study(
    world: CaptionWorldConfig | None = None,
    base: RetrievalConfig | None = None,
    *,
    seeds: Sequence[int] = (0,),
    progress: bool = True,
) -> list[RetrievalRow]:
    """Every (setting, method) row, metrics averaged over `seeds` (each a new world and a new
    training seed)."""
    world = world or CaptionWorldConfig()
    base = base or RetrievalConfig()
    configs = method_configs(base)
    sums: dict[tuple[str, str], RetrievalRow] = {}
    jobs = [(seed, s, m) for seed in seeds for s in SETTINGS for m in configs]
    bar = tqdm(total=len(jobs), desc="retrieval study", disable=not progress)
    for seed in seeds:
        domains = {d: simulate_captions(d, world, seed=seed) for d in ("coco", "flickr")}
        trained: dict[tuple[str, str], RetrievalResult] = {}
        for setting, train_on, test_on in SETTINGS:
            for method, cfg in configs.items():
                key = (train_on, method)
                if key not in trained:
                    trained[key] = train_retrieval(
                        domains[train_on]["train"],
                        cfg.model_copy(update={"seed": seed + 1}),
                        model_id=f"sim-clip/d{world.sim.d}-seed{seed}",
                        dataset=f"sim-{train_on}",
                        progress=False,
                    )
                result = trained[key]
                test = domains[test_on]["test"]
                metrics = evaluate_split(result, test)
                row = sums.get((setting, method))
                if row is None:
                    sums[(setting, method)] = RetrievalRow(
                        method=method,
                        train_dataset=None if result.model is None else f"sim-{train_on}",
                        test_dataset=f"sim-{test_on}",
                        setting=setting,
                        metrics=metrics,
                        model=result.model_id,
                        n_images=test.n_images,
                        n_captions=len(test.captions.texts),
                        health=dict(result.health),
                        config=result.config.model_dump(),
                    )
                else:
                    row.metrics = {k: v + metrics[k] for k, v in row.metrics.items()}
                    row.health = {k: v + result.health.get(k, 0.0) for k, v in row.health.items()}
                bar.update(1)
    bar.close()
    n = len(seeds)
    return [
        replace(
            r,
            metrics={k: v / n for k, v in r.metrics.items()},
            health={k: v / n for k, v in r.health.items()},
        )
        for r in sums.values()
    ]
