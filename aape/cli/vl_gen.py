"""CLI: `aape vl caption-train | vqa-train | caption-eval | caption-report | synthetic-vqa`
(captioning and VQA with an AAPE prefix on a frozen LM)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aape.cli.common import add_clip, add_config_args, add_home, command, int_list
from prompt_banks.errors import UserError


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _clip_ref(args: argparse.Namespace):  # -> CLIPRef (imported lazily: the CLI starts fast)
    from prompt_banks.clip import CLIPRef

    return CLIPRef(args.clip_model, args.pretrained)


def handle_train(args: argparse.Namespace) -> int:
    from aape.vl.gen_config import load_gen_config
    from aape.vl.gen_run import train_run
    from prompt_banks.paths import runs_dir

    cfg = load_gen_config(args.config, args.set)
    out = args.out or runs_dir(args.home) / "captioning" / f"{args.dataset}-{cfg.tag()}"
    result, folder = train_run(
        args.dataset, _clip_ref(args), cfg, home=args.home, out=out, progress=not args.quiet
    )
    _print({"run": str(folder), "method": cfg.tag(), **result.summary()})
    return 0


def _vqa_set(questions: str | None, annotations: str | None, images: str | None, what: str):
    from aape.vl.vqa_data import read_vqa

    given = [v is not None for v in (questions, annotations, images)]
    if not any(given):
        return None
    if not all(given):
        raise UserError(f"--{what}questions, --{what}annotations and --{what}images go together")
    return read_vqa(questions, annotations, images)  # type: ignore[arg-type]


def handle_vqa_train(args: argparse.Namespace) -> int:
    from aape.vl.gen_config import load_gen_config
    from aape.vl.gen_vqa_train import vqa_train_run
    from prompt_banks.paths import runs_dir

    cfg = load_gen_config(args.config, args.set)
    vqa = _vqa_set(args.questions, args.annotations, args.images, "")
    out = args.out or runs_dir(args.home) / "captioning" / f"{vqa.name}-{cfg.tag()}"
    result, folder, info = vqa_train_run(
        vqa, _clip_ref(args), cfg, home=args.home, out=out, captions=args.captions,
        progress=not args.quiet,
    )  # fmt: skip
    _print({"run": str(folder), "method": cfg.tag(), **info, **result.summary()})
    return 0


def handle_eval(args: argparse.Namespace) -> int:
    from aape.vl.gen_eval import DecodeOptions
    from aape.vl.gen_run import evaluate_run

    vqa = _vqa_set(args.questions, args.annotations, args.images, "")
    support = _vqa_set(
        args.support_questions, args.support_annotations, args.support_images, "support-"
    )
    if vqa is not None and "synthetic" in vqa.subtype:
        vqa.synthetic = True
    domains = None
    if args.nocaps_file:
        from aape.vl.vqa_data import nocaps_domains

        domains = nocaps_domains(args.nocaps_file)
    opts = DecodeOptions(args.decoding, args.beams, args.max_tokens, args.batch_size)
    out = evaluate_run(
        args.run, _clip_ref(args), home=args.home, dataset=args.dataset, split=args.split,
        vqa=vqa, support=support, shots=args.shots, opts=opts, tokenizer=args.tokenizer,
        max_images=args.max_images, domains=domains, progress=not args.quiet,
    )  # fmt: skip
    summary = {"method": out["method"]}
    if "captioning" in out:
        c = out["captioning"]
        keys = ("cider_d", "cider_d_by_domain", "clip_score", "ref_clip_score", "tokenizer")
        summary |= {k: c[k] for k in keys}
        summary["samples"] = c["samples"][:3]
    if "vqa" in out:
        summary["vqa_accuracy"] = {k: v["accuracy"] for k, v in out["vqa"]["by_shots"].items()}
    _print(summary)
    return 0


def handle_report(args: argparse.Namespace) -> int:
    from aape.vl.gen_report import markdown_report, read_evals

    text = markdown_report(read_evals(args.runs))
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise UserError(f"--out: {out} is a folder; pass a file such as report.md")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        folders = [Path(r) for r in args.runs if (Path(r) / "train.json").is_file()]
        if folders:
            from aape.vl.gen_report import loss_plot

            loss_plot(folders, out.with_suffix(".png"))
    print(text)
    return 0


def handle_synthetic_vqa(args: argparse.Namespace) -> int:
    from aape.vl.synthetic_vqa import synthetic_vqa
    from prompt_banks.paths import local_home

    home = local_home(args.home, "synthetic VQA files")
    out = args.out or home / "vl-vqa" / args.dataset
    files = synthetic_vqa(
        args.dataset, home / "vl-images", out, max_per_split=args.max_per_split,
        data_root=args.data_root,
    )  # fmt: skip
    _print({"note": "SYNTHETIC questions templated from the labels (not human)", **files})
    return 0


def _run_args(p: argparse.ArgumentParser, handler) -> None:
    """--home, the CLIP, --quiet, and the handler."""
    add_home(p)
    add_clip(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=handler)


def register(vl_sub: argparse._SubParsersAction) -> None:
    p = command(
        vl_sub,
        "caption-train",
        help="train a LiMBeR/AAPE prefix for a frozen LM on a caption dataset's cached features",
        examples="""
        aape vl caption-train --dataset coco --clip-model ViT-B-16 --pretrained openai \\
            --set lm=HuggingFaceTB/SmolLM2-1.7B --set steps=20000 --set device=cuda
        aape vl caption-train --dataset textile-defects-synthetic-captions --set steps=300
        aape vl caption-train --dataset coco --set method=limber --out runs/limber
        aape vl caption-train --dataset coco --set lambda_distill=0 --set k=10
        aape vl caption-train --dataset coco --set h_mode=frozen --set h_init=runs/ret/artifact
        aape vl caption-train --dataset flickr30k --set init_from=runs/coco-aape
        """,
    )
    p.add_argument("--dataset", required=True, help="an embedded caption dataset (train split)")
    p.add_argument("--out", help="run folder (default: <home>/runs/captioning/<dataset>-<tag>)")
    add_config_args(p, "GenConfig")
    _run_args(p, handle_train)

    p = command(
        vl_sub,
        "vqa-train",
        help="fine-tune a prefix on VQAv2 train questions (the fine-tuned VQA protocol)",
        examples="""
        aape vl vqa-train --questions v2_OpenEnded_mscoco_train2014_questions.json \
            --annotations v2_mscoco_train2014_annotations.json --images coco/train2014 \
            --captions coco --set init_from=runs/aape-lam5 --out runs/aape-lam5-vqa
        aape vl vqa-train --questions q.json --annotations a.json --images imgs \
            --set method=limber --set steps=2000 --out runs/limber-vqa-only
        """,
    )
    p.add_argument("--questions", required=True, help="VQAv2 questions JSON (train split)")
    p.add_argument("--annotations", required=True, help="VQAv2 annotations JSON (train split)")
    p.add_argument("--images", required=True, help="the questions' image folder")
    p.add_argument("--captions", help="embedded caption dataset whose images (matched by path) "
                   "add L_distill + L_reward; without it L_task alone")  # fmt: skip
    p.add_argument("--out", help="run folder (default: <home>/runs/captioning/<set>-<tag>)")
    add_config_args(p, "GenConfig")
    _run_args(p, handle_vqa_train)

    p = command(
        vl_sub,
        "caption-eval",
        help="captions (CIDEr-D, CLIPScore, RefCLIPScore) and VQAv2 accuracy of a trained run",
        examples="""
        aape vl caption-eval --run runs/coco-aape --dataset coco --split test
        aape vl caption-eval --run runs/coco-aape --dataset nocaps-val --decoding beam \\
            --nocaps-file nocaps_val_4500_captions.json
        aape vl caption-eval --run runs/coco-aape \\
            --questions v2_OpenEnded_mscoco_val2014_questions.json \\
            --annotations v2_mscoco_val2014_annotations.json --images val2014 --shots 0,1,2,4
        """,
    )
    p.add_argument("--run", required=True, help="a run folder of `aape vl caption-train`")
    p.add_argument("--dataset", help="caption dataset to caption (its references score them)")
    p.add_argument("--split", default="test", help="caption split (default test)")
    p.add_argument("--nocaps-file", help="NoCaps captions JSON: also CIDEr-D per domain")
    p.add_argument("--questions", help="VQAv2 questions JSON")
    p.add_argument("--annotations", help="VQAv2 annotations JSON")
    p.add_argument("--images", help="the questions' image folder")
    p.add_argument(
        "--support-questions", help="few-shot examples: questions JSON (default: the set)"
    )
    p.add_argument("--support-annotations", help="few-shot examples: annotations JSON")
    p.add_argument("--support-images", help="few-shot examples: image folder")
    p.add_argument("--shots", type=int_list, default=(0,), help="in-context examples, e.g. 0,1,2,4")
    p.add_argument("--decoding", choices=["greedy", "beam"], default="greedy")
    p.add_argument("--beams", type=int, default=3, help="beam width (--decoding beam)")
    p.add_argument("--max-tokens", type=int, default=20, help="maximum caption length in tokens")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tokenizer", choices=["auto", "ptb", "python"], default="auto",
                   help="CIDEr-D tokenizer: ptb needs Java; auto falls back to python")  # fmt: skip
    p.add_argument("--max-images", type=int, help="evaluate only the first N images/questions")
    _run_args(p, handle_eval)

    p = command(
        vl_sub,
        "caption-report",
        help="the Markdown table (and sample captions/answers) of caption-eval results",
        examples="""
        aape vl caption-report --runs runs/limber runs/aape-lam0 runs/aape-lam5 --out report.md
        """,
    )
    p.add_argument("--runs", nargs="+", required=True, help="run folders or eval-*.json files")
    p.add_argument("--out", help="Markdown file to write (also printed; + a loss plot .png)")
    p.set_defaults(func=handle_report)

    p = command(
        vl_sub,
        "synthetic-vqa",
        help="SYNTHETIC VQAv2-format questions templated from an offline dataset's labels",
        examples="""
        aape vl synthetic-vqa --dataset textile-defects --max-per-split 40
        """,
    )
    p.add_argument("--dataset", required=True, help="a registered offline dataset")
    p.add_argument("--data-root", help="where the dataset's files are (default: its registry)")
    p.add_argument("--max-per-split", type=int, default=None, help="images kept per split")
    p.add_argument("--out", help="folder for the files (default: <home>/vl-vqa/<dataset>)")
    add_home(p)
    p.set_defaults(func=handle_synthetic_vqa)
