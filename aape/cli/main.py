"""Entry point of the `aape` console script."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aape.cli import (
    bank_generate,
    bank_quality,
    bank_store,
    doctor,
    features,
    pipeline,
    simulate,
    train,
    vl,
)
from prompt_banks.errors import UserError, os_error_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aape",
        description="Adapt CLIP to a domain with LLM-written class descriptions (AAPE).",
        epilog="Run `aape demo` for the whole pipeline on the embedded defaults.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bank = sub.add_parser("bank", help="prompt banks: import, generate, embed, query, export")
    bank_sub = bank.add_subparsers(dest="bank_command", required=True, metavar="BANK_COMMAND")
    bank_store.register(bank_sub)
    bank_generate.register(bank_sub)
    bank_quality.register(bank_sub)
    features.register(sub)
    train.register(sub)
    simulate.register(sub)
    pipeline.register(sub)
    vl.register(sub)
    doctor.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Our own loggers speak at INFO; libraries that log to the root logger (open_clip) only warn.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for name in ("aape", "prompt_banks", "pipelines"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the environment (disk full, read-only or missing folder)
        if exc.errno is None:  # no errno: Arrow's decoding error of a damaged part
            return _damaged_part(exc, args)
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return UserError.exit_code
    except Exception as exc:
        return _damaged_part(exc, args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _damaged_part(exc: Exception, args: argparse.Namespace) -> int:
    """A decoding error behind which a damaged store part lies: name the part, in one line; an
    environment error with no errno gets its one line too; any other error is a bug and keeps
    its traceback."""
    from aape.doctor import explain_read_failure

    explained = explain_read_failure(exc, getattr(args, "home", None))
    if explained is not None:
        print(f"error: {explained}", file=sys.stderr)
        return explained.exit_code
    if isinstance(exc, OSError):
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return UserError.exit_code
    raise exc


if __name__ == "__main__":
    sys.exit(main())
