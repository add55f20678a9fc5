"""CLI: `aape bank generate`: LLM-written class descriptions for a domain spec."""

from __future__ import annotations

import argparse
import logging

from aape.cli.common import add_home, command
from prompt_banks.generate_report import DEFAULT_MAX_FAILED_SHARE


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `sub`."""
    p = command(
        sub,
        "generate",
        help="ask an LLM to describe every class of a domain spec; store the rows in the bank",
        examples="""
            aape bank generate --spec prompt_banks/specs/textile-defects.yaml
            aape bank generate --spec my-domain.yaml --backend openai \\
                --base-url http://127.0.0.1:8080/v1 --model my-model --concurrency 8
            aape bank generate --spec my-domain.yaml --retry-failed
            aape bank generate --spec my-domain.yaml --max-failed-share 0   # any failure: exit 1


            exit status: 0 when the run stored its rows; 1 when more than --max-failed-share
            of the rows it asked for failed (stored as failed: --retry-failed asks them again);
            2 when nothing could run (a bad spec, or no LLM server answering --base-url).
            Two runs on one domain share the work: each class is leased by one run at a time.
        """,
    )
    p.add_argument("--spec", required=True, help="domain spec YAML (see prompt_banks/specs/)")
    p.add_argument(
        "--backend",
        choices=["local", "openai", "vllm"],
        default=None,
        help="LLM backend (default: the spec's llm.backend, else local SmolLM2)",
    )
    p.add_argument(
        "--base-url",
        default=None,
        help="openai: server URL, e.g. http://127.0.0.1:8080/v1; several replicas comma-separated",
    )
    p.add_argument("--model", default=None, help="model name (openai/vllm) or local registry name")
    p.add_argument("--model-path", default=None, help="local: any GGUF file; vllm: a model folder")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="requests in flight (default: the spec's llm.concurrency)",
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="ask again only the rows stored as failed"
    )
    p.add_argument(
        "--max-failed-share",
        type=_share,
        default=DEFAULT_MAX_FAILED_SHARE,
        help="exit 1 when more than this share of the rows asked for failed "
        f"(0 to 1; default {DEFAULT_MAX_FAILED_SHARE:g})",
    )
    p.add_argument("--limit-classes", type=int, default=None, help="only the first N classes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_home(p)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from prompt_banks.backends import make_backend, resolve_settings
    from prompt_banks.errors import UserError
    from prompt_banks.generate import generate_bank
    from prompt_banks.generate_report import check_failed_share
    from prompt_banks.paths import banks_dir
    from prompt_banks.spec import load_spec
    from prompt_banks.store import BankStore

    for flag in ("concurrency", "limit_classes"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')}: must be at least 1, got {value}")
    if not getattr(args, "verbose", False):
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    spec = load_spec(args.spec)
    settings = resolve_settings(
        spec,
        backend=args.backend,
        base_url=args.base_url,
        model=args.model,
        model_path=args.model_path,
    )
    store = BankStore(banks_dir(args.home))
    with make_backend(settings) as backend:
        where = f"{backend.model_id} ({settings.backend}) into {store.root}"
        print(f"generating {spec.domain} with {where}")
        report = generate_bank(
            spec.model_copy(update={"llm": settings}),
            store,
            backend,
            concurrency=args.concurrency or settings.concurrency,
            retry_failed=args.retry_failed,
            limit_classes=args.limit_classes,
            progress=not args.no_progress,
        )
    print(report.summary())
    again = f"`aape bank generate --spec {args.spec} --retry-failed`"
    check_failed_share(report, args.max_failed_share, again=again)
    if report.failed:
        print(f"{report.failed} rows failed; {again} asks them again")
    return 0
