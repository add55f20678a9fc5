"""The simulation study: every baseline, variant and ablation of AAPE on simulated CLIP worlds.

One call (`run_study`, CLI `aape study`) generates the worlds, trains and evaluates every run
through the project's own protocol (`aape.protocols.base_to_new`: train on the base classes,
test on base and on new), and writes `docs/study.md` with tables, paired differences, plots and
a verdict on each of the paper's claims. See docs/simulation.md for the worlds.

Grid (chosen to fit 15 minutes on 2 CPU cores; every row says which recipe trained it):
* curves: normal world, K in 1..16, zero-shot, CuPL, linear probe, AAPE lambda 0, AAPE;
* ablations at 16 shots: aggregators (mlp, mean, random), class_embed (bank_mean, both), the
  CoOp SGD recipe (AAPE and lambda 0);
* control world at 16 shots (descriptions without visual information);
* scaling at 16 shots: 5 and 20 prompts per class, and a weaker "small LLM" world.

The parts: `study_plan` (what runs), `study_runs` (running it), `study_claims` (statistics and
verdicts), `study_tables` (tables, plots, CSV); this module renders the page and runs it all.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path

import torch

from aape.study_claims import Claim, check_claims
from aape.study_plan import StudyPlan, full_plan, quick_plan
from aape.study_runs import Row, run_plan
from aape.study_tables import (
    curve_table,
    pair_table,
    plot_bars,
    plot_curves,
    summary_table,
    write_csv,
)
from prompt_banks.atomic import write_text_atomic
from prompt_banks.paths import runs_dir

STUDY_COMMAND = "aape study --out docs/study"


TRAIT_LABELS = {
    "max_norm_error": "max abs(norm - 1), all embeddings",
    "modality_gap": "modality gap: norm of mean(image) - mean(prompt)",
    "cos_image_template_match": "cos(image, own template)",
    "cos_image_template_other": "cos(image, other templates)",
    "cos_image_image_same_class": "cos(image, image), same class",
    "cos_image_image_other_class": "cos(image, image), other classes",
    "description_attribute_overlap": "share of mentioned attributes that are true",
    "description_attribute_cosine": "cos(description, own attributes) - cos(description, other "
    "classes' attributes)",
    "zero_shot_acc": "zero-shot accuracy, all classes",
    "zero_shot_acc_generic": "zero-shot accuracy, generic-name classes",
    "zero_shot_acc_specialised": "zero-shot accuracy, specialised-name classes",
    "cupl_acc": "CuPL accuracy, all classes",
}


def render(
    rows: list[Row],
    traits: dict[str, dict[str, float]],
    claims: list[Claim],
    plan: StudyPlan,
    plots: dict[str, Path],
    report: Path,
    *,
    command: str,
    seconds: float,
    cpu_seconds: float,
    jobs: int,
) -> str:
    k, kr = plan.max_shots, plan.ablation_shots
    img = {name: os.path.relpath(p, report.parent) for name, p in plots.items()}
    curve_shots = sorted({r.shots for r in rows if r.experiment == "curves"})
    worlds = sorted(traits)
    lines = [
        "# The simulation study",
        "",
        "AAPE, its baselines and its ablations on a seeded CLIP-like embedding space "
        "([simulation.md](simulation.md)): no pretrained CLIP can be had on this machine. "
        "Everything on this page (tables, plots, verdicts) is written by:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {seconds / 60:.1f} min "
        "wall time, "
        f"{cpu_seconds / 60:.1f} CPU-min in {jobs} worker process(es) on {os.cpu_count()} cores "
        f"({platform.machine()}, torch {torch.__version__}); {sum(not r.reused for r in rows)} "
        "runs "
        f"computed, {sum(r.reused for r in rows)} reused from an earlier invocation's cache.",
        "",
        "**Protocol.** CoCoOp base-to-new on every row: the world has "
        f"{plan.sim_config.n_classes} classes (d = {plan.sim_config.d}); a run trains on K images "
        "per base class "
        "(the first half of the labels; every cached augmented view, one random view per image "
        "per epoch) "
        "and is tested on the base classes' test images among the base classes and on the new "
        "classes' "
        "test images among the new classes; H = 2BN/(B+N). The few-shot curves are these runs at "
        "each K. "
        f"Seeds {', '.join(map(str, plan.seeds))} set the K-shot pick and the initialisation; one "
        "world "
        f"(seed {plan.world_seed}), so std is over training seeds. Accuracies in percent, mean ± "
        "std over "
        "seeds. Paired differences: A - B per seed, then mean ± std, and on how many seeds A won. "
        "`teacher_acc` / `student_acc` are the method page's health metrics on held-out base "
        "images. "
        "The linear probe cannot name new classes (new = -).",
        "",
        "**Recipes.** Every AAPE row says its recipe: `adamw` (lr 1e-3, wd 1e-2, 100 epochs) "
        "unless marked "
        "`coop_sgd` (SGD lr 0.002, momentum 0.9, CoOp's epochs by shots). Both: batch 32, one "
        "warm-up epoch, "
        f"cosine decay. The ablations, the recipe comparison, the control world and the scaling "
        f"runs use {kr} shots (SGD: CoOp's 100 epochs there): with 16 shots they would not fit "
        "the 15-minute budget of this 2-core machine. AAPE lambda 0 with `class_embed: "
        "template` "
        "cannot see the bank through h or g (the reward trains only the aggregator), so its "
        "accuracy is "
        "the same in every world and it runs once (tests/test_study.py checks the invariance).",
        "",
        "## World traits",
        "",
        "| trait | " + " | ".join(worlds) + " |",
        "|" + " --- |" * (len(worlds) + 1),
    ]
    for key, label in TRAIT_LABELS.items():
        if key in traits[worlds[0]]:
            lines.append(
                f"| {label} | " + " | ".join(f"{traits[w][key]:.3f}" for w in worlds) + " |"
            )
    main_keys = [("curves", v, k) for v in ("zeroshot", "cupl", "linear_probe", "aape_l0", "aape")]
    lines += ["", f"## Main results (normal world, {k} shots)", "", *summary_table(rows, main_keys)]
    lines += ["", "## Few-shot curves (normal world)", ""]
    lines += curve_table(rows, ["zeroshot", "cupl", "linear_probe", "aape_l0", "aape"], curve_shots)
    lines += ["", f"![few-shot curves]({img['curves']})", ""]
    abl = [
        ("curves", "aape", kr),
        *[("ablations", v, kr) for v in ("aape_mlp", "aape_mean", "aape_random")],
        *[("class-embed", v, kr) for v in ("aape_bank_mean", "aape_both")],
        ("curves", "aape_l0", kr),
        ("recipes", "aape_sgd", kr),
        ("recipes", "aape_l0_sgd", kr),
    ]
    lines += [
        f"## Ablations: aggregators, class_embed, recipes (normal world, {kr} shots)",
        "",
        *summary_table(rows, abl),
    ]
    lines += ["", f"![ablations]({img['ablations']})", ""]
    ctl = [
        *[("control", v, kr) for v in ("zeroshot", "cupl", "aape")],
        ("curves", "aape_l0", kr),
    ]
    lines += [
        f"## Control world ({kr} shots): descriptions without visual information",
        "",
        *summary_table(rows, ctl),
    ]
    scale = [(e, v, kr) for e in ("prompts-5", "curves", "small-llm") for v in ("cupl", "aape")]
    lines += [
        "",
        f"## Scaling: prompts per class and a weaker LLM ({kr} shots)",
        "",
        *summary_table(rows, scale),
    ]
    lines += ["", f"![scaling]({img['scaling']})", ""]
    lines += ["## Paired differences", "", *pair_table(rows, plan)]
    lines += [
        "",
        "## The paper's claims",
        "",
        "| claim | verdict in the simulation | measured (accuracy points) |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {c.claim} | **{c.verdict}** | {c.evidence} |" for c in claims]
    lines += [
        "",
        'Why each verdict comes out as it does: see "Reading the study" in '
        "[simulation.md](simulation.md).",
        "",
    ]
    return "\n".join(lines)


def run_study(
    out: str | os.PathLike[str] = "docs/study",
    *,
    quick: bool = False,
    runs_root: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
    jobs: int | None = None,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Run the whole study; write `report` (default `<out>.md`) and runs.csv + PNGs under `out`.
    Per-run results are cached under `runs_root` (default `$AAPE_HOME/runs/study`) and reused."""
    start, cpu0 = time.perf_counter(), _cpu_seconds()
    plan = quick_plan() if quick else full_plan()
    jobs = jobs if jobs is not None else (1 if quick else min(2, os.cpu_count() or 1))
    out_dir = Path(out)
    report_path = Path(report) if report is not None else out_dir.with_suffix(".md")
    runs = (
        Path(runs_root)
        if runs_root is not None
        else runs_dir() / ("study-quick" if quick else "study")
    )
    quiet = [logging.getLogger(name) for name in ("aape.protocols", "aape.train")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:  # one line per run would bury the progress bar
        lg.setLevel(logging.WARNING)
    try:
        rows, traits = run_plan(plan, runs, jobs=jobs, progress=progress)
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / "runs.csv")
    kr = plan.ablation_shots
    curve_shots = sorted({r.shots for r in rows if r.experiment == "curves"})
    plots = {
        "curves": plot_curves(
            rows,
            ["zeroshot", "cupl", "linear_probe", "aape_l0", "aape"],
            curve_shots,
            out_dir / "curves.png",
        ),
        "ablations": plot_bars(
            rows,
            [
                ("curves", "aape", kr, "attention (AdamW)"),
                ("ablations", "aape_mlp", kr, "mlp"),
                ("ablations", "aape_mean", kr, "mean"),
                ("ablations", "aape_random", kr, "random"),
                ("curves", "aape_l0", kr, "lambda 0 (AdamW)"),
                ("class-embed", "aape_bank_mean", kr, "bank_mean"),
                ("class-embed", "aape_both", kr, "both"),
                ("recipes", "aape_sgd", kr, "SGD"),
                ("recipes", "aape_l0_sgd", kr, "SGD lambda 0"),
            ],
            out_dir / "ablations.png",
            f"AAPE ablations (normal world, {kr} shots)",
        ),
        "scaling": plot_bars(
            rows,
            [
                ("prompts-5", "cupl", kr, "CuPL n=5"),
                ("prompts-5", "aape", kr, "AAPE n=5"),
                ("curves", "cupl", kr, "CuPL n=20-90"),
                ("curves", "aape", kr, "AAPE n=20-90"),
                ("small-llm", "cupl", kr, "CuPL small LLM"),
                ("small-llm", "aape", kr, "AAPE small LLM"),
                ("control", "cupl", kr, "CuPL control"),
                ("control", "aape", kr, "AAPE control"),
            ],
            out_dir / "scaling.png",
            f"prompts per class, LLM quality, control ({kr} shots)",
        ),
    }
    claims = check_claims(rows, plan)
    text = render(
        rows,
        traits,
        claims,
        plan,
        plots,
        report_path,
        command=command or (STUDY_COMMAND + (" --quick" if quick else "")),
        seconds=time.perf_counter() - start,
        cpu_seconds=_cpu_seconds() - cpu0,
        jobs=jobs,
    )
    report_path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(text, report_path)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
