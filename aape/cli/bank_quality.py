"""CLI: `aape bank report` and `aape bank compare`: is this bank any good, and which is better?"""

from __future__ import annotations

import argparse
import json
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aape.cli.common import add_clip, add_home, command, int_list, positive_int
from aape.cli.task_args import add_data_checks, add_task_args, task_factory, train_config
from prompt_banks.errors import UserError
from prompt_banks.paths import runs_dir

if TYPE_CHECKING:
    from aape.data import Task


def handle_report(args: Namespace) -> int:
    from aape.bank_report import bank_report, store_texts, write_bank_report

    name, make = task_factory(args)
    task = make(args.shots, args.seed)
    texts, health = None, None
    if args.bank_domain:
        tokens_of = None if args.features_dir else task.model_id
        texts, health = store_texts(args.home, args.bank_domain, task, tokens_of=tokens_of)
    report = bank_report(task, texts=texts, hygiene=health, run=args.run)
    # Beside the domain's runs, where `build_domain` writes it too.
    where = runs_dir(args.home) / args.bank_domain if args.bank_domain else runs_dir(args.home)
    out = Path(args.out) if args.out else where / "bank-report" / name
    paths = write_bank_report(task, report, out)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(Path(paths["markdown"]).read_text(encoding="utf-8"))
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


def _bank_sources(args: Namespace) -> dict[str, Callable[[int, int], Task]]:
    """Name -> make_task(shots, seed) for each bank compared, on one dataset and its features."""
    if args.features_dirs:
        dirs = [d.strip() for d in args.features_dirs.split(",") if d.strip()]
        sources = {
            Path(d).name: Namespace(
                **{**vars(args), "features_dir": d, "bank_domain": None, "bank_snapshot": None}
            )
            for d in dirs
        }
    else:
        banks = [b.strip() for b in (args.banks or "").split(",") if b.strip()]
        sources = {}
        for bank in banks:  # DOMAIN or DOMAIN@SNAPSHOT (an id from `aape bank history`)
            domain, _, snapshot = bank.partition("@")
            sources[bank] = Namespace(
                **{**vars(args), "features_dir": None, "bank_domain": domain,
                   "bank_snapshot": snapshot or None}
            )  # fmt: skip
    if len(sources) < 2:
        raise UserError(
            "banks: compare needs two or more: --banks D1,D2 with --dataset, "
            "or --features-dirs A,B (e.g. two `aape simulate` worlds)"
        )
    return {name: task_factory(ns)[1] for name, ns in sources.items()}


def handle_compare(args: Namespace) -> int:
    from aape import protocols
    from aape.bank_quality import quality
    from aape.bank_report import compare_markdown
    from prompt_banks.atomic import write_json_atomic, write_text_atomic

    cfg = train_config(args)
    cfgs = [cfg.model_copy(update={"method": "cupl"}), *protocols.with_lambda0(cfg)]
    root = Path(args.out) if args.out else runs_dir(args.home) / "bank-compare"
    reports: dict[str, dict[str, Any]] = {}
    accuracy: dict[str, dict[str, float]] = {}
    for name, make in _bank_sources(args).items():
        shots = max(args.shots)
        reports[name] = quality(make(shots, args.seeds[0]))
        records = protocols.few_shot(
            make, f"bank-{name}", cfgs, root, shots=[shots], seeds=list(args.seeds),
            progress=not args.quiet,
        )  # fmt: skip
        by_method: dict[str, list[float]] = {}
        for rec in records:
            by_method.setdefault(rec["method"], []).append(float(rec["acc1"]))
        accuracy[name] = {m: sum(v) / len(v) for m, v in by_method.items()}
    table = compare_markdown(reports, accuracy)
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"reports": reports, "accuracy": accuracy}, root / "compare.json")
    write_text_atomic(table, root / "compare.md")
    print(table)
    print(f"written: {root / 'compare.md'}, {root / 'compare.json'}")
    return 0


def register(bank_sub: argparse._SubParsersAction) -> None:
    """Add `report` and `compare` to `aape bank`."""
    p = command(
        bank_sub,
        "report",
        help="how good is a bank on your images: hygiene, margins, CuPL vs zero-shot, attention",
        examples="""
        aape bank report --dataset textile-defects --bank-domain textile-defects --shots 16
        aape bank report --features-dir sim-normal            # an `aape simulate` world
        aape bank report --dataset animal-mnist --bank-domain animal-mnist --run RUN_DIR
        """,
    )
    add_task_args(p)
    p.add_argument("--shots", type=positive_int, default=16, help="training images per class")
    p.add_argument("--run", help="an AAPE run on this bank: also show what its teacher weighs")
    p.add_argument(
        "--out", help="report folder (default: $AAPE_HOME/runs/[<domain>/]bank-report/<task>)"
    )
    p.add_argument("--json", action="store_true", help="print the JSON instead of the Markdown")
    p.set_defaults(func=handle_report)

    p = command(
        bank_sub,
        "compare",
        help="two or more banks side by side on one dataset: quality, CuPL and AAPE accuracy",
        examples="""
        aape bank compare --dataset textile-defects --banks textile-smollm,textile-llama --shots 4
        aape bank compare --dataset textile-defects --banks textile@3f2a91,textile --shots 4
        aape simulate --out sim-normal && aape simulate --out sim-small --small-llm
        aape bank compare --features-dirs sim-normal,sim-small --shots 4 --seeds 1,2
        """,
    )
    src = p.add_argument_group("banks")
    src.add_argument("--dataset", help="registered dataset name (with --banks)")
    src.add_argument(
        "--banks", help="comma list of bank domains in the store, each DOMAIN or DOMAIN@SNAPSHOT"
    )
    src.add_argument("--features-dirs", help="comma list of bring-your-own-features folders")
    src.add_argument("--data-root", help="where the dataset's files are (default: its registry)")
    add_data_checks(src)
    add_home(p)
    add_clip(p)
    p.add_argument("--shots", type=int_list, default=(4,), help="shots (the largest is used)")
    p.add_argument("--seeds", type=int_list, default=(1,), help="seeds, e.g. 1,2,3 (default 1)")
    p.add_argument("--config", help="YAML/JSON file of TrainConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="runs root (default: $AAPE_HOME/runs/bank-compare)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=handle_compare)
