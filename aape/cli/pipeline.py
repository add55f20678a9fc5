"""CLI: `aape demo`, `aape build-domain`, `aape serve`: the Prefect flows of `pipelines/`.

Prefect is imported only when one of these runs (the rest of the CLI never pays for it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from aape.cli.common import add_clip, add_home, command, int_list


def _add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--spec", required=True, help="domain spec YAML, or the name of a bundled spec (e.g. dtd)"
    )
    p.add_argument(
        "--dataset", required=True, help="registered dataset (see `aape features --help`)"
    )
    p.add_argument(
        "--data-root", default=None, help="where the dataset lies (folder/csv/CoOp datasets)"
    )
    add_home(p)
    add_clip(p, default_model=None)
    p.add_argument(
        "--shots", type=int_list, default=(16,), help="images per class, e.g. 1,4,16 (default 16)"
    )
    p.add_argument(
        "--seeds", type=int_list, default=(1,), help="few-shot draws, e.g. 1,2,3 (default 1)"
    )
    p.add_argument(
        "--views", type=int, default=16, help="augmented views per train image (default 16)"
    )
    p.add_argument(
        "--max-eval-images", type=int, default=None, help="val/test images per class (default all)"
    )
    p.add_argument("--config", default=None, help="YAML/JSON file of TrainConfig fields")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one TrainConfig field, e.g. --set recipe=adamw (repeatable)",
    )
    p.add_argument(
        "--llm-backend", default=None, help="override the spec's LLM backend (local, openai, vllm)"
    )
    p.add_argument("--llm-base-url", default=None, help="override the spec's OpenAI-compatible URL")
    p.add_argument("--no-generate", action="store_true", help="use the bank already in the store")
    p.add_argument("--no-train", action="store_true", help="refresh the bank and the features only")
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster for the embedding and feature shards (default: $AAPE_RAY_ADDRESS)",
    )


def _build_params(args: argparse.Namespace) -> Any:
    from aape.config import load_config
    from aape.datasets import DATASETS
    from pipelines.params import BuildDomainParams, resolve_spec
    from prompt_banks.errors import UserError
    from prompt_banks.spec import CLIPSettings

    # Checked here, before Prefect starts (seconds): a typo fails at once.
    resolve_spec(args.spec)
    if args.dataset not in DATASETS:
        raise UserError(
            f"--dataset: '{args.dataset}' is unknown; use one of {', '.join(sorted(DATASETS))}"
        )

    llm = {k: v for k, v in (("backend", args.llm_backend), ("base_url", args.llm_base_url)) if v}
    return BuildDomainParams(
        spec=args.spec,
        dataset=args.dataset,
        data_root=args.data_root,
        home=args.home,
        clip=CLIPSettings(model=args.clip_model, pretrained=args.pretrained)
        if args.clip_model
        else None,
        llm=llm,
        shots=args.shots,
        seeds=args.seeds,
        n_views=args.views,
        max_eval_images=args.max_eval_images,
        config=load_config(args.config, args.set),
        generate=not args.no_generate,
        train=not args.no_train,
    )


class _NoUserErrorTraceback(logging.Filter):
    """Prefect logs a failed run's exception with its traceback; for a UserError (bad input, an
    LLM that does not answer) the run's state and the CLI's one `error:` line say it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        from prompt_banks.errors import UserError

        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_http(args: argparse.Namespace) -> None:
    """Prefect's client logs every API request at INFO; flow and task progress is what matters.
    Offline machines cannot send Prefect's telemetry: off unless the user turned it on."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import prefect  # noqa: F401  (configures Prefect's loggers, which the filter then joins)

    if not getattr(args, "verbose", False):
        logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_NoUserErrorTraceback())


def _build_domain(args: argparse.Namespace) -> int:
    params = _build_params(args)
    _quiet_http(args)
    from pipelines.build_domain import build_domain

    result = build_domain(params, ray_address=args.ray_address)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _serve(args: argparse.Namespace) -> int:
    params = _build_params(args)
    _quiet_http(args)
    from pipelines.serve import serve_domain

    serve_domain(
        params,
        refresh_cron=args.refresh_cron,
        retrain_cron=args.retrain_cron,
        timezone=args.timezone,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from prompt_banks.paths import local_home

    # The home must be writable before any flow starts (an OSError here is the CLI's one line).
    home = local_home(args.home, "demo runs").resolve()
    home.mkdir(parents=True, exist_ok=True)
    # Without a server, Prefect keeps its run history in a SQLite file under PREFECT_HOME; the
    # demo's goes beside its data (and is not shared with other Prefect work on the machine).
    if not os.environ.get("PREFECT_API_URL"):
        prefect_home = Path(os.environ.setdefault("PREFECT_HOME", str(home / "prefect")))
        prefect_home.mkdir(parents=True, exist_ok=True)  # its server does not create the folder
        # Its first start creates and migrates that database: more than Prefect's default 20 s
        # on a busy 2-core machine.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    _quiet_http(args)
    from pipelines.demo import run_demo

    return run_demo(home=args.home, fast=args.fast)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `sub`."""
    p = command(
        sub,
        "demo",
        help="the whole pipeline on textile-defect images with the embedded defaults",
        examples="""
            aape demo                # SmolLM2 bank, features, AAPE + baselines, report (minutes)
            aape demo --fast         # a smaller run
            aape demo --home /tmp/aape-demo
        """,
    )
    add_home(p)
    p.add_argument("--fast", action="store_true", help="fewer descriptions, shots and test images")
    p.set_defaults(func=_demo)

    p = command(
        sub,
        "build-domain",
        help="Prefect flow: bank, features, AAPE and baselines for one domain spec and dataset",
        examples="""
            aape build-domain --spec my-domain.yaml --dataset folder --data-root ./images
            aape build-domain --spec dtd --dataset dtd --data-root ~/data \
                --clip-model ViT-B-16 --pretrained openai
            aape build-domain --spec my.yaml --dataset csv --data-root list.csv --no-generate \
                --shots 1,4,16 --seeds 1,2,3
            AAPE_RAY_ADDRESS=127.0.0.1:6379 aape build-domain --spec my.yaml --dataset folder \
                --data-root ./images
        """,
    )
    _add_build_args(p)
    p.set_defaults(func=_build_domain)

    p = command(
        sub,
        "serve",
        help="serve scheduled deployments that refresh a domain's bank and retrain (flow.serve)",
        examples="""
            aape serve --spec my-domain.yaml --dataset folder --data-root ./images
            aape serve --spec my.yaml --dataset folder --data-root ./images \
                --refresh-cron "0 */6 * * *"
            PREFECT_API_URL=http://127.0.0.1:4200/api aape serve --spec my.yaml --dataset folder \
                --data-root ./images
        """,
    )
    _add_build_args(p)
    p.add_argument(
        "--refresh-cron", default="0 3 * * *", help="bank refresh schedule (default daily 03:00)"
    )
    p.add_argument(
        "--retrain-cron", default="0 4 * * 0", help="retrain schedule (default Sundays 04:00)"
    )
    p.add_argument(
        "--timezone", default=os.environ.get("TZ", "UTC"), help="time zone of the cron schedules"
    )
    p.set_defaults(func=_serve)
