"""CLI: `aape simulate` (write simulated bring-your-own-features folders), `aape study` and
`aape study-banks`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from aape.cli.common import add_home, command
from prompt_banks.atomic import write_json_atomic


def register(sub: argparse._SubParsersAction) -> None:
    """Add `simulate`, `study` and `study-banks`."""
    p = command(
        sub,
        "simulate",
        help="write a simulated CLIP-like world as a bring-your-own-features folder",
        examples="""
        aape simulate --out sim-normal
        aape simulate --out sim-control --world control --seed 0
        aape simulate --out sim-tiny --small          # d = 64, 12 classes (tests, smoke runs)
        aape train --features-dir sim-normal --set recipe=adamw
        """,
    )
    p.add_argument(
        "--out", required=True, help="folder to write (meta.json, *.parquet, simulation.json)"
    )
    p.add_argument(
        "--world",
        choices=["normal", "control"],
        default="normal",
        help="control: descriptions carry no visual information (default normal)",
    )
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument(
        "--small-llm", action="store_true", help="descriptions from the weaker 'small LLM'"
    )
    p.add_argument("--small", action="store_true", help="a tiny world (d = 64, 12 classes)")
    p.set_defaults(func=handle_simulate)

    s = command(
        sub,
        "study",
        help="regenerate the simulation study (tables, plots, verdicts on the paper's claims)",
        examples="""
        aape study                    # docs/study.md + docs/study/*.png, under 15 min on 2 cores
        aape study --quick --out /tmp/study   # a tiny end-to-end run, about a minute
        """,
    )
    s.add_argument(
        "--out", default="docs/study", help="folder for plots and runs.csv; the report is <out>.md"
    )
    s.add_argument("--quick", action="store_true", help="tiny world, 2 seeds, a few epochs")
    s.add_argument(
        "--runs", help="per-run results, reused when complete (default: $AAPE_HOME/runs/study)"
    )
    s.add_argument("--jobs", type=int, help="worker processes (default: 2, or 1 with --quick)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    add_home(s)
    s.set_defaults(func=handle_study)

    b = command(
        sub,
        "study-banks",
        help="the bank-quality study: margin vs the simulation's truth, bank comparison, pruning",
        examples="""
        aape study-banks                      # docs/bank-quality.md (minutes on 2 cores)
        aape study-banks --out /tmp/banks     # /tmp/banks.md + /tmp/banks/runs.json
        """,
    )
    b.add_argument(
        "--out", default="docs/bank-quality", help="folder for runs.json; the report is <out>.md"
    )
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=handle_study_banks)


def handle_simulate(args: argparse.Namespace) -> int:
    from aape import byof, simulation

    cfg = simulation.small_config() if args.small else simulation.SimConfig()
    llm = simulation.SMALL_LLM if args.small_llm else None
    world = simulation.simulate(cfg, world=args.world, seed=args.seed, llm=llm)
    out = byof.write_task(world.task, args.out)
    params = {
        "world": args.world,
        "seed": args.seed,
        "small_llm": args.small_llm,
        "config": simulation.config_dict(cfg),
    }
    write_json_atomic(params, out / "simulation.json")
    t = world.task
    print(
        f"wrote {out}: {len(t.texts.names)} classes, d = {t.texts.dim}, {t.train.n_images} train "
        "images "
        f"x {cfg.n_views} views, {t.test.n_images} test images, world {args.world}, seed "
        f"{args.seed}"
    )
    return 0


def handle_study(args: argparse.Namespace) -> int:
    from aape.study import STUDY_COMMAND, run_study

    cmd = STUDY_COMMAND if Path(args.out) == Path("docs/study") else f"aape study --out {args.out}"
    if args.home:
        os.environ["AAPE_HOME"] = args.home  # the runs cache and the worker processes follow it
    Path(args.out).mkdir(parents=True, exist_ok=True)  # unwritable: fail now, not after the runs
    report = run_study(
        args.out,
        quick=args.quick,
        runs_root=args.runs,
        jobs=args.jobs,
        progress=not args.quiet,
        command=cmd + (" --quick" if args.quick else ""),
    )
    print(f"wrote {report}")
    return 0


def handle_study_banks(args: argparse.Namespace) -> int:
    from aape.bank_study import run_bank_study

    Path(args.out).mkdir(parents=True, exist_ok=True)  # unwritable: fail now, not after the runs
    print(f"wrote {run_bank_study(args.out, progress=not args.quiet)}")
    return 0
