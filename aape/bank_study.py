"""The bank-quality study on the CLIP-like simulation: does the margin find bad descriptions,
does it tell a weak LLM's bank from a good one, and does pruning by it help?

Written by `aape study-banks --out docs/bank-quality` (docs/bank-quality.md): the ground truth
only a simulation has (which attributes a description states truly) checks the margin, and
training runs measure the `prune_margin` switch in the normal and the control world.
"""

from __future__ import annotations

import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from aape.bank_quality import auc, description_margins, quality
from aape.byof import select_shots
from aape.config import TrainConfig
from aape.evaluate import evaluate
from aape.simulation import SMALL_LLM, SimConfig, SimWorld, simulate
from aape.train import train
from prompt_banks.atomic import write_json_atomic, write_text_atomic

# 40 classes at d = 256: the ground truth shows through the phrasing noise, and the whole study
# runs in minutes on two cores.
STUDY_WORLD = SimConfig(n_classes=40, n_families=8, d=256)
THRESHOLDS: tuple[float | None, ...] = (None, 0.0, 0.02)
SHOTS = (4, 16)
SEEDS = (1, 2, 3)
COMMAND = "aape study-banks --out docs/bank-quality"


def truth_auc(sim: SimWorld, shots: int = 16, seed: int = 1) -> dict[str, float]:
    """AUC of the margin for descriptions that state only true attributes of their class against
    those that state only wrong ones: pooled over classes, and within class (each class's
    margins centred on its median, so a hard class does not count against its descriptions)."""
    task = select_shots(sim.task, shots, seed)
    margins = description_margins(task.texts, task.train)
    raw, centred, positive = [], [], []
    for c, said in enumerate(sim.truth.mentions):
        true = np.zeros(said.shape[1], dtype=bool)
        true[sim.truth.class_attributes[c]] = True
        n_true, n_wrong = (said & true).sum(1), (said & ~true).sum(1)
        v = margins.values(c).numpy()
        good, bad = (n_true > 0) & (n_wrong == 0), (n_true == 0) & (n_wrong > 0)
        keep = good | bad
        raw.extend(v[keep])
        centred.extend((v - np.median(v))[keep])
        positive.extend(good[keep])
    pos = np.array(positive)
    return {
        "pooled": auc(np.array(raw), pos),
        "within_class": auc(np.array(centred), pos),
        "true_only": int(pos.sum()),
        "wrong_only": int((~pos).sum()),
    }


def _worlds() -> dict[str, SimWorld]:
    return {
        "normal": simulate(STUDY_WORLD, seed=0),
        "small-llm": simulate(STUDY_WORLD, seed=0, llm=SMALL_LLM),
        "control": simulate(STUDY_WORLD, world="control", seed=0),
    }


def _runs(worlds: dict[str, SimWorld], progress: bool) -> list[dict[str, Any]]:
    plan = [
        (w, k, s, t, m)
        for w in ("normal", "control")
        for k in SHOTS
        for s in SEEDS
        for t in THRESHOLDS
        for m in ("cupl", "aape")
    ]
    rows = []
    for w, k, s, t, m in tqdm(plan, desc="pruning runs", disable=not progress):
        task = select_shots(worlds[w].task, k, s)
        cfg = TrainConfig(method=m, recipe="adamw", prune_margin=t, seed=s)
        start = time.perf_counter()
        result = train(task, cfg, progress=False)
        acc = evaluate(result.classifier, task.test, task.texts)["acc1"]
        kept = 1.0
        if t is not None:
            margins = description_margins(task.texts, task.train)
            kept = float((margins.margin[margins.mask] > t).float().mean())
        rows.append(
            {"world": w, "shots": k, "seed": s, "threshold": t, "method": m, "acc1": acc,
             "kept_share": kept, "seconds": time.perf_counter() - start}
        )  # fmt: skip
    return rows


def _cell(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def render(
    worlds: dict[str, Any], aucs: dict[str, Any], runs: list[dict[str, Any]], info: str
) -> str:
    lines = [
        "# Bank quality on the simulation",
        "",
        "Everything on this page is written by:",
        "",
        f"```bash\n{COMMAND}\n```",
        "",
        info,
        "",
        f"World: {STUDY_WORLD.n_classes} classes, d = {STUDY_WORLD.d}, seed 0 "
        "([simulation.md](simulation.md)). Margins (`aape bank report`) use 16 training shots, "
        "seed 1. The `small-llm` world has the same images and names, and descriptions from the "
        "weaker writer; in `control` the descriptions carry no visual information.",
        "",
        "## Does the margin find hallucinated descriptions?",
        "",
        "AUC of the margin: descriptions that state only true attributes of their class "
        "(positives) against those that state only wrong ones. *Within class* centres each "
        "class's margins on its median: the margin is meant to rank a class's own descriptions.",
        "",
        "| world | AUC within class | AUC pooled | true-only | wrong-only |",
        "| --- | --- | --- | --- | --- |",
    ]
    for w, a in aucs.items():
        lines.append(
            f"| {w} | {a['within_class']:.3f} | {a['pooled']:.3f} | {a['true_only']} | "
            f"{a['wrong_only']} |"
        )
    lines += [
        "",
        "## Does `aape bank compare` tell the banks apart?",
        "",
        "| world | negative margins | median margin | CuPL (val) | zero-shot (val) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for w, q in worlds.items():
        lines.append(
            f"| {w} | {100 * q['margin']['negative_share']:.1f}% | {q['margin']['median']:.4f} | "
            f"{100 * q['proxies']['cupl_acc']:.1f}% | {100 * q['proxies']['zeroshot_acc']:.1f}% |"
        )
    lines += [
        "",
        "## Pruning by margin (`--set prune_margin=T`)",
        "",
        "Test accuracy (%) over seeds 1-3, mean ± std; AAPE is attention, lambda 5, adamw. "
        "*kept* is the share of descriptions above the threshold on the training shots (a "
        "class left with none keeps its best one).",
        "",
        "| world | K | threshold | kept | CuPL | AAPE |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for w in ("normal", "control"):
        for k in SHOTS:
            for t in THRESHOLDS:
                sel = [
                    r for r in runs if r["world"] == w and r["shots"] == k and r["threshold"] == t
                ]
                kept = statistics.fmean(r["kept_share"] for r in sel)
                cells = [
                    _cell([r["acc1"] for r in sel if r["method"] == m]) for m in ("cupl", "aape")
                ]
                name = "none" if t is None else f"{t:g}"
                lines.append(
                    f"| {w} | {k} | {name} | {100 * kept:.0f}% | {cells[0]} | {cells[1]} |"
                )
    return "\n".join(lines) + "\n"


def run_bank_study(out: str | Path, *, progress: bool = True) -> Path:
    """Run the study and write `<out>.md` beside `out/` (the runs as JSON)."""
    start = time.perf_counter()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    worlds = _worlds()
    aucs = {w: truth_auc(sim) for w, sim in worlds.items() if w != "control"}
    summaries = {w: quality(select_shots(sim.task, 16, 1)) for w, sim in worlds.items()}
    runs = _runs(worlds, progress)
    info = (
        f"Last run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"{(time.perf_counter() - start) / 60:.1f} min wall time on {platform.machine()}, "
        f"torch {torch.__version__}."
    )
    write_json_atomic({"auc": aucs, "worlds": summaries, "runs": runs}, folder / "runs.json")
    page = folder.parent / f"{folder.name}.md"
    write_text_atomic(render(summaries, aucs, runs, info), page)
    return page
