"""CLI: `aape features` caches frozen-CLIP image features of a dataset."""

from __future__ import annotations

import argparse
import json

from aape.cli.common import add_clip, add_home, command
from aape.datasets import DATASETS, SPLITS, load_dataset
from aape.datasets.base import DEFAULT_VIEWS
from prompt_banks.errors import UserError


def add_image_checks(parser: argparse._ActionsContainer) -> None:
    """--max-missing, for every command that reads images."""
    parser.add_argument(
        "--max-missing",
        type=int,
        default=0,
        metavar="N",
        help="go on without up to N image files that are missing or unreadable (default 0: "
        "any such file is an error); the run records the images it used",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `sub`."""
    p = command(
        sub,
        "features",
        help="compute and cache CLIP image features of a dataset (incremental)",
        examples="""
            aape features --dataset textile-defects --views 4
            aape features --dataset animal-mnist --splits val,test
            aape features --dataset dtd --data-root ~/data --clip-model ViT-B-16 --pretrained openai
            aape features --dataset folder --data-root ./my_images   # <class>/*.jpg
            aape features --dataset csv --data-root ./manifest.csv     # path,label[,split]
            aape features --dataset imagenet --data-root ~/data --max-missing 10
        """,
    )
    p.add_argument("--dataset", required=True, help=f"one of: {', '.join(sorted(DATASETS))}")
    p.add_argument(
        "--data-root", default=None, help="where the dataset lies (CoOp's $DATA, a folder or a CSV)"
    )
    add_clip(p)
    p.add_argument(
        "--views",
        type=int,
        default=DEFAULT_VIEWS,
        help=f"augmented views per training image, besides the centre crop "
        f"(default {DEFAULT_VIEWS})",
    )
    p.add_argument(
        "--splits", default=None, help="comma-separated subset of train,val,test (default: all)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per CLIP forward pass")
    add_image_checks(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_home(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    if splits is not None and (bad := [s for s in splits if s not in SPLITS]):
        raise UserError(f"--splits: {', '.join(bad)} unknown; use a subset of {','.join(SPLITS)}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size: {args.batch_size} must be at least 1")
    # torch loads here, not at import: `aape --help` must stay instant.
    from aape.missing_images import extract_usable, without
    from prompt_banks.clip import CLIPRef, load_clip

    dataset = load_dataset(args.dataset, args.data_root)
    records = [r for s in splits or list(dataset.splits) for r in dataset.split(s)]
    clip = load_clip(CLIPRef(args.clip_model, args.pretrained))
    _, report, use = extract_usable(
        lambda unusable: without(records, unusable),
        clip,
        args.home,
        dataset=dataset.name,
        max_missing=args.max_missing,
        n_views=args.views,
        batch_size=args.batch_size,
    )
    summary = {
        "dataset": report.dataset,
        "model_id": report.model_id,
        "computed": report.computed,
        "cached": report.cached,
        "skipped_images": len(use.unusable),
        "images_per_second": round(report.images_per_second, 1),
        "seconds": round(report.seconds, 2),
    }
    left_out = sorted(use.unusable.values())
    if args.json:
        print(json.dumps({**summary, **use.as_record(), "left_out": left_out}, indent=1))
    else:
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
        print("images: " + " ".join(f"{s}={n}" for s, n in use.used.items()))
        for path in left_out:
            print(f"left out: {path}")
    return 0
