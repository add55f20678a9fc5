"""Arguments shared by several subcommands, declared once."""

from __future__ import annotations

import argparse
import textwrap


def add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home",
        default=None,
        help="root of every store, cache and run (default: $AAPE_HOME, else ./aape-data); "
        "an fsspec URL (s3://bucket/aape) holds the bank store and feature cache, while runs "
        "and artifacts need a local --home or --out",
    )


def add_clip(parser: argparse.ArgumentParser, *, default_model: str | None = "aape-tiny") -> None:
    parser.add_argument(
        "--clip-model",
        default=default_model,
        help="open_clip architecture (ViT-B-16, ...), aape-tiny, local-dir:/path, or "
        "hf-hub:org/name (read from the Hugging Face cache with HF_HUB_OFFLINE=1)",
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        help="open_clip pretrained tag (openai, ...) or a local weights file (.safetensors, a "
        ".pt/.bin state dict, or OpenAI's TorchScript .pt); omit for aape-tiny's random weights",
    )


def command(
    sub: argparse._SubParsersAction, name: str, *, help: str, examples: str
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with worked examples."""
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def int_list(text: str) -> tuple[int, ...]:
    """argparse type for a comma-separated list of integers ("1,2,4")."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a comma-separated list of integers"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one integer")
    return values


def add_config_args(parser: argparse.ArgumentParser, what: str = "TrainConfig") -> None:
    """--config FILE and repeatable --set KEY=VALUE, the overrides of a training config."""
    group = parser.add_argument_group("training config")
    group.add_argument("--config", help=f"YAML/JSON file of {what} fields")
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. --set lambda_distill=0 (repeatable)",
    )


def positive_int(text: str) -> int:
    """argparse type for a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
