"""CLI: `aape vl ...` (captions, retrieval training and evaluation) and `aape retrieve`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aape.cli import vl_gen
from aape.cli.common import add_clip, add_config_args, add_home, command, int_list
from prompt_banks.errors import UserError


def _clip_ref(args: argparse.Namespace):  # -> CLIPRef (imported lazily: the CLI starts fast)
    from prompt_banks.clip import CLIPRef

    return CLIPRef(args.clip_model, args.pretrained)


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def handle_import(args: argparse.Namespace) -> int:
    from aape.vl.run import import_captions

    report = import_captions(
        args.format,
        args.file,
        home=args.home,
        images=args.images,
        name=args.name,
        split=args.split,
        restval=args.restval,
    )
    _print(report.to_dict())
    return 0


def handle_synthetic(args: argparse.Namespace) -> int:
    from aape.vl.bank import caption_store
    from aape.vl.synthetic import synthetic_captions
    from prompt_banks.paths import local_home

    folder = local_home(args.home, "synthetic caption images") / "vl-images"
    ds = synthetic_captions(
        args.dataset, folder, max_per_split=args.max_per_split, data_root=args.data_root
    )
    report = caption_store(args.home).import_captions(ds)
    _print({**report.to_dict(), "note": ds.description})
    return 0


def handle_embed(args: argparse.Namespace) -> int:
    from aape.vl.run import embed_dataset

    _print(
        embed_dataset(
            args.dataset,
            _clip_ref(args),
            home=args.home,
            n_views=args.views,
            max_missing=args.max_missing,
            progress=not args.quiet,
        )
    )
    return 0


def handle_train(args: argparse.Namespace) -> int:
    from aape.vl.config import load_retrieval_config
    from aape.vl.run import train_dataset

    cfg = load_retrieval_config(args.config, args.set)
    run = train_dataset(
        args.dataset, _clip_ref(args), cfg, home=args.home, out=args.out, force=args.force,
        progress=not args.quiet,
    )  # fmt: skip
    r = run.result
    _print(
        {
            "dataset": args.dataset,
            "method": r.config.tag(),
            "epochs": r.epochs_done,
            "train_seconds": round(r.train_seconds, 2),
            "health": r.health,
            "run": str(run.out),
            "artifact": None if run.artifact is None else str(run.artifact),
        }
    )
    return 0


def handle_eval(args: argparse.Namespace) -> int:
    from aape.vl.evaluate import markdown_table
    from aape.vl.run import evaluate_dataset

    rows, paths = evaluate_dataset(
        args.dataset, _clip_ref(args), home=args.home, artifacts=args.artifact or [],
        split=args.split, zero_shot=not args.no_zeroshot, out=args.out,
    )  # fmt: skip
    print(markdown_table(rows), end="")
    print(f"wrote {paths['json']} and {paths['markdown']}")
    return 0


def handle_simulate(args: argparse.Namespace) -> int:
    from aape.vl.config import load_retrieval_config
    from aape.vl.evaluate import write_results
    from aape.vl.simulation import CaptionWorldConfig, small_world
    from aape.vl.study import retrieval_study

    world = small_world() if args.quick else CaptionWorldConfig()
    base = load_retrieval_config(args.config, args.set)
    rows = retrieval_study(world, base, seeds=args.seeds, progress=not args.quiet)
    paths = write_results(rows, args.out)
    print(Path(paths["markdown"]).read_text(encoding="utf-8"), end="")
    print(f"wrote {paths['json']} and {paths['markdown']}")
    return 0


def _read_texts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--texts: {p} does not exist; pass a file with one text per line")
    texts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise UserError(f"--texts: {p} holds no text; one text per line")
    return texts


def handle_retrieve(args: argparse.Namespace) -> int:
    from aape.vl.inference import Retriever

    texts = _read_texts(args.texts)
    ranker = Retriever.load(args.artifact)
    ranked = ranker.rank(args.images, texts, top_k=args.top_k)
    _print(
        [
            {"image": image, "top_k": [{"text": t, "score": round(s, 4)} for t, s in row]}
            for image, row in zip(args.images, ranked, strict=True)
        ]
    )
    return 0


def _add_run_args(p: argparse.ArgumentParser, *, clip: bool = True) -> None:
    add_home(p)
    if clip:
        add_clip(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    vl = sub.add_parser("vl", help="vision-language AAPE: captions, retrieval train/eval")
    vl_sub = vl.add_subparsers(dest="vl_command", required=True, metavar="VL_COMMAND")

    p = command(
        vl_sub,
        "import-captions",
        help="store a caption file (Karpathy, COCO captions, CSV, JSONL) in the caption bank",
        examples="""
        aape vl import-captions --format karpathy --file dataset_flickr30k.json \\
            --images flickr30k-images
        aape vl import-captions --format karpathy --file dataset_coco.json --images coco/
        aape vl import-captions --format coco --file annotations/captions_val2014.json \\
            --images coco/val2014
        aape vl import-captions --format csv --file my_captions.csv --name shop
        """,
    )
    p.add_argument("--format", required=True, choices=["karpathy", "coco", "csv", "jsonl"])
    p.add_argument("--file", required=True, help="the caption file")
    p.add_argument("--images", help="the folder its image paths are relative to")
    p.add_argument("--name", help="dataset name (default: from the file)")
    p.add_argument("--split", help="COCO captions only: train|val|test (default: by file name)")
    p.add_argument(
        "--restval",
        choices=["train", "drop"],
        default="train",
        help="Karpathy COCO's restval images: join train (default, as usual) or are left out",
    )
    _add_run_args(p, clip=False)
    p.set_defaults(func=handle_import)

    p = command(
        vl_sub,
        "synthetic-captions",
        help="SYNTHETIC captions templated from an offline dataset's labels (pipeline tests)",
        examples="""
        aape vl synthetic-captions --dataset textile-defects --max-per-split 60
        aape vl synthetic-captions --dataset animal-mnist --max-per-split 200
        """,
    )
    p.add_argument("--dataset", required=True, help="a registered offline dataset")
    p.add_argument("--data-root", help="where the dataset's files are (default: its registry)")
    p.add_argument("--max-per-split", type=int, default=None, help="images kept per split")
    _add_run_args(p, clip=False)
    p.set_defaults(func=handle_synthetic)

    p = command(
        vl_sub,
        "embed",
        help="embed a caption dataset's texts and cache its image features (incremental)",
        examples="""
        aape vl embed --dataset flickr30k --clip-model ViT-B-16 --pretrained openai
        aape vl embed --dataset coco --views 2
        aape vl embed --dataset flickr30k --max-missing 3
        """,
    )
    p.add_argument("--dataset", required=True, help="an imported caption dataset")
    p.add_argument(
        "--views", type=int, default=0, help="augmented views per training image (default 0)"
    )
    p.add_argument(
        "--max-missing",
        type=int,
        default=0,
        help="leave out at most N missing or unreadable images (default 0: any is an error)",
    )
    _add_run_args(p)
    p.set_defaults(func=handle_embed)

    p = command(
        vl_sub,
        "train",
        help="train retrieval AAPE on a caption dataset; writes a checkpoint and an artifact",
        examples="""
        aape vl train --dataset coco --clip-model ViT-B-16 --pretrained openai
        aape vl train --dataset coco --set lambda_distill=0 --out runs/coco-lam0
        aape vl train --dataset flickr30k --set query=residual --set adamw_epochs=10
        """,
    )
    p.add_argument("--dataset", required=True, help="an embedded caption dataset")
    p.add_argument("--out", help="run folder (default: <home>/runs/retrieval/<dataset>-<tag>)")
    p.add_argument("--force", action="store_true", help="start again instead of resuming")
    add_config_args(p, "RetrievalConfig")
    _add_run_args(p)
    p.set_defaults(func=handle_train)

    p = command(
        vl_sub,
        "eval",
        help="image->text and text->image Recall@1/5/10 (CLIP_benchmark keys, JSON + Markdown)",
        examples="""
        aape vl eval --dataset flickr30k --artifact runs/coco/artifact --out results/f30k
        aape vl eval --dataset coco --artifact runs/coco/artifact runs/coco-lam0/artifact
        """,
    )
    p.add_argument("--dataset", required=True, help="the caption dataset to test on")
    p.add_argument("--artifact", nargs="*", help="retrieval artifacts to evaluate")
    p.add_argument("--split", default="test", help="the split to test on (default test)")
    p.add_argument("--no-zeroshot", action="store_true", help="leave out the CLIP zero-shot row")
    p.add_argument("--out", help="results folder (default: <home>/runs/retrieval/eval-<name>)")
    _add_run_args(p)
    p.set_defaults(func=handle_eval)

    p = command(
        vl_sub,
        "simulate",
        help="the retrieval study in the simulated caption world (docs/retrieval.md)",
        examples="""
        aape vl simulate --out docs/retrieval --seeds 0,1
        aape vl simulate --quick --out /tmp/vl-sim
        """,
    )
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--seeds", type=int_list, default=(0,), help="world seeds, e.g. 0,1")
    p.add_argument("--quick", action="store_true", help="a tiny world (d = 64), seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_args(p, "RetrievalConfig")
    p.set_defaults(func=handle_simulate)
    vl_gen.register(vl_sub)  # captioning and VQA (aape/cli/vl_gen.py)

    p = command(
        sub,
        "retrieve",
        help="rank texts for images with CLIP and a retrieval artifact",
        examples="""
        aape retrieve --artifact runs/coco/artifact --texts captions.txt a.jpg b.jpg
        aape retrieve --artifact runs/coco/artifact --texts captions.txt --top-k 3 *.png
        """,
    )
    p.add_argument("--artifact", required=True, help="an artifact of `aape vl train`")
    p.add_argument("--texts", required=True, help="a text file, one candidate text per line")
    p.add_argument("--top-k", type=int, default=5, help="texts shown per image (default 5)")
    p.add_argument("images", nargs="+", help="image files")
    p.set_defaults(func=handle_retrieve)
