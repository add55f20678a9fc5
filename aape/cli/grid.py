"""CLI: `aape grid`, a training grid over many datasets as one Prefect flow with one task per run
(local worker processes, threads, or a Ray cluster), and one combined report."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from aape.cli.common import add_clip, add_home, command, int_list
from aape.cli.task_args import add_data_checks
from aape.protocol_names import PROTOCOLS
from prompt_banks.errors import UserError


def _names(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _validated(data: dict[str, Any], where: str) -> Any:
    from pydantic import ValidationError

    from pipelines.params import GridParams

    try:
        return GridParams.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")  # a check across fields names its own
        field = ".".join(str(x) for x in err["loc"])
        raise UserError(f"{where}: {field}: {msg}" if field else f"{where}: {msg}") from None


def _from_file(path: str) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--grid-file: {p} does not exist; write a grid YAML (see --help)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(f"{p}: not UTF-8 text; save the grid file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{p}: not valid YAML{where}; write a mapping of grid fields") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: must hold a mapping of grid fields (datasets, protocol, shots...)")
    return data


def _from_args(args: argparse.Namespace) -> dict[str, Any]:
    from aape.config import load_config

    datasets, domains = _names(args.datasets), _names(args.bank_domains)
    if len(domains) != len(datasets):
        raise UserError(
            f"--bank-domains: give one bank domain per dataset ({len(datasets)} datasets, "
            f"{len(domains)} domain{'s' if len(domains) != 1 else ''})"
        )
    targets, target_domains = _names(args.targets), _names(args.target_bank_domains)
    if target_domains and len(target_domains) != len(targets):
        raise UserError(
            f"--target-bank-domains: give one bank domain per target ({len(targets)} targets, "
            f"{len(target_domains)} domain{'s' if len(target_domains) != 1 else ''})"
        )
    return {
        "datasets": [{"dataset": d, "domain": b} for d, b in zip(datasets, domains, strict=True)],
        "targets": [
            {"dataset": t, "domain": target_domains[i] if target_domains else None}
            for i, t in enumerate(targets)
        ],
        "protocol": args.protocol,
        "data_root": args.data_root,
        "clip": {"model": args.clip_model, "pretrained": args.pretrained},
        "shots": args.shots,
        "seeds": args.seeds,
        "n_views": args.views,
        "max_eval_images": args.max_eval_images,
        "max_missing": args.max_missing,
        "shots_policy": args.shots_policy,
        "config": load_config(args.config, args.set),
        "lambda0": not args.no_lambda0,
        "baselines": _names(args.baselines),
    }


def grid_params(args: argparse.Namespace) -> Any:
    """The grid's parameters from --grid-file or the flags, checked before Prefect starts."""
    from aape.datasets import DATASETS

    if bool(args.grid_file) == bool(args.datasets):
        raise UserError("grid: pass --grid-file FILE or --datasets A,B --bank-domains A,B")
    where = args.grid_file or "grid"
    data = _from_file(args.grid_file) if args.grid_file else _from_args(args)
    run = {"home": args.home, "force": args.force or None, "report_dir": args.out}
    data.update({k: v for k, v in run.items() if v is not None})
    data.setdefault("cpus_per_run", args.cpus_per_run)
    data.setdefault("gpus_per_run", args.gpus_per_run)
    params = _validated(data, where)
    for item in (*params.datasets, *params.targets):
        if item.dataset not in DATASETS:
            raise UserError(
                f"{where}: datasets: '{item.dataset}' is unknown; use one of "
                f"{', '.join(sorted(DATASETS))}"
            )
    return params


def handle_grid(args: argparse.Namespace) -> int:
    params = grid_params(args)
    from aape.cli.pipeline import quiet_prefect
    from pipelines.evaluate import evaluate_grid
    from pipelines.runner import make_task_runner, shared_api

    quiet_prefect(args)
    runner = make_task_runner(
        args.ray_address, threads=args.workers, processes=args.pool == "processes"
    )
    with shared_api():
        result = evaluate_grid.with_options(task_runner=runner)(params)
    markdown = Path(result["report"]["markdown"])
    print(markdown.read_text(encoding="utf-8"))
    if args.json:
        print(json.dumps(result["runs"], indent=2))
    print(f"{len(result['runs'])} runs; report: {markdown}  table: {result['report']['csv']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "grid",
        help="a training grid over many datasets (one task per run) and one combined report",
        examples="""
        aape grid --datasets dtd,eurosat --bank-domains dtd,eurosat --data-root ~/data \\
            --clip-model ViT-B-16 --pretrained openai --protocol base-to-new --seeds 1,2,3
        aape grid --grid-file paper-grid.yaml --workers 4
        AAPE_RAY_ADDRESS=127.0.0.1:6379 aape grid --grid-file paper-grid.yaml --gpus-per-run 0.25
        aape grid --datasets imagenet --bank-domains imagenet --data-root ~/data \
            --protocol domain-generalisation --targets imagenet-v2,imagenet-sketch --shots 16

        a grid file holds the same fields (datasets: [{dataset, domain, data_root}], protocol,
        targets: [{dataset, domain, data_root}] (the transfer protocols' test sets),
        data_root, clip: {model, pretrained}, shots, seeds, n_views, max_eval_images, config:
        {TrainConfig fields}, lambda0, baselines, cpus_per_run, gpus_per_run), e.g.
          protocol: base-to-new
          data_root: ~/data
          clip: {model: ViT-B-16, pretrained: openai}
          shots: [16]
          seeds: [1, 2, 3]
          datasets:
            - {dataset: dtd, domain: dtd}
            - {dataset: eurosat, domain: eurosat}
        """,
    )
    src = p.add_argument_group("the grid (or --grid-file)")
    src.add_argument("--grid-file", help="YAML file of grid fields (see the examples)")
    src.add_argument("--datasets", help="comma list of registered datasets")
    src.add_argument("--bank-domains", help="comma list: the bank domain of each dataset")
    src.add_argument("--data-root", help="where the datasets' files are (CoOp: one root)")
    src.add_argument("--protocol", choices=PROTOCOLS, default="few-shot", help="the protocol")
    src.add_argument(
        "--targets", help="cross-dataset / domain-generalisation: comma list of test datasets"
    )
    src.add_argument(
        "--target-bank-domains",
        help="comma list: each target's bank domain (needed unless class_embed=template)",
    )
    src.add_argument("--shots", type=int_list, default=(1, 2, 4, 8, 16), help="e.g. 1,2,4,8,16")
    src.add_argument("--seeds", type=int_list, default=(1, 2, 3), help="e.g. 1,2,3")
    src.add_argument("--views", type=int, default=16, help="augmented views per train image")
    src.add_argument("--max-eval-images", type=int, help="val/test images per class (default all)")
    add_data_checks(src)
    src.add_argument("--config", help="YAML/JSON file of TrainConfig fields")
    src.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    src.add_argument("--baselines", default="zeroshot,cupl", help="also run these; '' for none")
    src.add_argument("--no-lambda0", action="store_true", help="skip the lambda=0 companion run")
    add_clip(src)
    run = p.add_argument_group("where the runs go")
    add_home(run)
    run.add_argument(
        "--ray-address", help="Ray cluster for the runs (default: $AAPE_RAY_ADDRESS; else local)"
    )
    run.add_argument(
        "--workers",
        type=int,
        default=max(1, os.cpu_count() or 1),
        help="local workers without Ray (default: the CPU count)",
    )
    run.add_argument(
        "--pool",
        choices=["processes", "threads"],
        default="processes",
        help="local workers as processes (default) or threads of this one",
    )
    run.add_argument("--cpus-per-run", type=float, default=1.0, help="Ray: CPUs each run asks for")
    run.add_argument("--gpus-per-run", type=float, default=0.0, help="Ray: GPUs each run asks for")
    run.add_argument("--force", action="store_true", help="re-run complete runs")
    run.add_argument("--out", help="combined report folder (default: $AAPE_HOME/runs/grid-report)")
    run.add_argument("--json", action="store_true", help="also print the runs as JSON")
    p.set_defaults(func=handle_grid)
