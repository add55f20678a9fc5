"""Arguments and helpers of the commands that train on one task (`aape train`, `aape eval`,
`aape bank report`, `aape bank compare`, `aape grid`): the task source, its data checks and
the training config."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from aape.cli.common import add_clip, add_config_args, add_home
from aape.cli.features import add_image_checks
from aape.config import TrainConfig, load_config
from aape.fewshot import SHOTS_POLICIES
from prompt_banks.errors import UserError

if TYPE_CHECKING:
    from aape.data import Task


def add_data_checks(group: argparse._ActionsContainer) -> None:
    """--max-missing and --shots-policy: what a task may do without."""
    add_image_checks(group)
    group.add_argument(
        "--shots-policy",
        choices=SHOTS_POLICIES,
        default="error",
        help="a class with fewer training images than --shots: error (default) or train it on "
        "all it has (all-available; the run records it and the report marks it)",
    )


def add_task_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("task (a dataset + bank, or a bring-your-own-features folder)")
    src.add_argument("--dataset", help="registered dataset name (see `aape features --help`)")
    src.add_argument("--features-dir", help="bring-your-own-features folder (instead of --dataset)")
    src.add_argument("--bank-domain", help="prompt-bank domain in the store for the classes")
    src.add_argument(
        "--bank-snapshot",
        metavar="ID",
        help="read the bank as of this snapshot (`aape bank history`), not as it is now",
    )
    src.add_argument("--data-root", help="where the dataset's files are (default: its registry)")
    src.add_argument("--seed", type=int, default=1, help="few-shot sampling and training seed")
    add_data_checks(src)
    add_home(p)
    add_clip(p)
    add_config_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def task_factory(args: argparse.Namespace) -> tuple[str, Callable[[int, int], Task]]:
    """(task name, make_task(shots, seed)); the loaders are imported only when used."""
    if bool(args.dataset) == bool(args.features_dir):
        raise UserError("task: pass exactly one of --dataset NAME or --features-dir DIR")
    from aape.grid import TaskSource, byof_source
    from prompt_banks.clip import CLIPRef

    common = dict(
        home=args.home,
        bank_domain=args.bank_domain,
        bank_snapshot=args.bank_snapshot,
        shots_policy=args.shots_policy,
    )
    if args.features_dir:
        source = byof_source(args.features_dir, **common)
    else:
        source = TaskSource(
            name=args.dataset,
            dataset=args.dataset,
            data_root=args.data_root,
            clip=CLIPRef(args.clip_model, args.pretrained),
            max_missing=args.max_missing,
            **common,
        )
    return source.name, source.load


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The training config of --config FILE and the --set overrides."""
    return load_config(args.config, args.set)
