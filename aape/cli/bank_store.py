"""CLI: the prompt-bank store: `aape bank import|embed|stats|query|export`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from aape.cli.common import add_clip, add_home, command
from prompt_banks.errors import UserError
from prompt_banks.input_files import FORMATS
from prompt_banks.paths import banks_dir


def _store(args: argparse.Namespace):
    from prompt_banks.store import BankStore

    return BankStore(banks_dir(args.home))


def _clip(args: argparse.Namespace):
    from prompt_banks.clip import CLIPRef, load_clip

    if not args.clip_model:
        raise UserError("clip model: missing; pass --clip-model (e.g. aape-tiny or ViT-B-16)")
    return load_clip(CLIPRef(args.clip_model, args.pretrained), device=args.device)


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _import(args: argparse.Namespace) -> int:
    from prompt_banks.importers import import_file
    from prompt_banks.input_files import load_class_list, load_rename_map

    rename = load_rename_map(args.rename) if args.rename else None
    dataset = args.dataset or args.domain
    classes = load_class_list(args.classes, dataset) if args.classes else None
    report = import_file(
        _store(args),
        args.file,
        domain=args.domain,
        fmt=args.format,
        rename=rename,
        classes=classes,
        dataset=dataset,
    )
    if args.json:
        _print_json(report.to_dict())
    else:
        print("\n".join(report.summary()))
    return 0


def _embed(args: argparse.Namespace) -> int:
    from prompt_banks.embed import embed_domain

    store = _store(args)
    clip = _clip(args)
    report = embed_domain(
        store, args.domain, clip, batch_size=args.batch_size, progress=not args.quiet
    )
    if args.json:
        _print_json(report.to_dict())
    else:
        print(
            f"domain '{report.domain}' with {report.model_id}: {report.texts} texts, "
            f"{report.encoded} encoded ({report.truncated} truncated), {report.already} already "
            f"embedded, {report.seconds:.1f} s"
        )
    return 0


def _stats(args: argparse.Namespace) -> int:
    from prompt_banks.queries import stats

    s = stats(_store(args), args.domain)
    if args.json:
        _print_json(s)
        return 0
    st, oc = s["status"], s["per_class_ok"]
    print(
        f"domain '{s['domain']}': {s['classes']} classes, {s['rows']} rows "
        f"(ok {st['ok']}, dropped {st['dropped']}, failed {st['failed']}), "
        f"sources {s['sources']}"
    )
    print(
        f"usable descriptions per class: min {oc['min']}, median {oc['median']}, max {oc['max']}"
        + (f"; none for {oc['classes_without_ok']}" if oc["classes_without_ok"] else "")
    )
    print(
        f"duplicates: {s['duplicates']['dropped']} dropped, "
        f"{s['duplicates']['ok_repeated']} repeated among usable rows; "
        f"dropped by reason: {s['dropped_by_reason'] or 'none'}"
    )
    for error, n in s["failed_by_error"].items():
        print(f"failed x{n}: {error}")
    for model, e in s["embeddings"].items():
        print(
            f"embeddings {model}: {e['embedded']} of {s['texts']} texts (d={e['dim']}), "
            f"{e['truncated']} truncated ({e['truncated_share']:.2%}), max {e['max_tokens']} tokens"
        )
    if not s["embeddings"]:
        print("embeddings: none yet; run `aape bank embed`")
    return 0


def _query(args: argparse.Namespace) -> int:
    from prompt_banks.embed import encode_image_file, text_vector
    from prompt_banks.queries import nearest

    store = _store(args)
    clip = _clip(args)
    vector = (
        text_vector(clip, args.text)
        if args.text is not None
        else (encode_image_file(clip, args.image).numpy())
    )
    hits = nearest(store, args.domain, args.class_name, vector, clip.model_id, k=args.top_k)
    if args.json:
        _print_json(hits)
    else:
        for h in hits:
            print(f"{h['score']:+.4f}  {h['text']}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from prompt_banks.importers import export_cupl

    done = export_cupl(_store(args), args.domain, args.out)
    print(f"wrote {args.out}: {done['classes']} classes, {done['texts']} texts")
    return 0


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `sub`."""
    p = command(
        sub,
        "import",
        help="import a public prompt file (CuPL, DCLIP, CLIP_benchmark) into a domain",
        examples="""
            aape bank import ../shared/prompt_banks/cupl_full/pets_prompts_full.json --domain pets
            aape bank import descriptors_pets.json --domain pets --format dclip
            aape bank import cupl_cal.json --domain caltech101 --rename cupl_to_coop.json
            aape bank import imagenet_prompts_base.json --domain imagenet --classes imagenet
            # CLIP_benchmark's en_zeroshot_classification_templates.json (here en_templates.json)
            # expanded over its en_classnames.json, or over your own class list:
            aape bank import en_templates.json --domain eurosat --classes en_classnames.json
            aape bank import en_templates.json --domain my-cars --dataset cars --classes cars.txt
        """,
    )
    p.add_argument("file", help="JSON file: {class: [text, ...]} or CLIP_benchmark templates")
    p.add_argument("--domain", required=True, help="domain (dataset) the classes belong to")
    p.add_argument(
        "--format",
        choices=list(FORMATS),
        default=None,
        help="file format (default: detected from the content)",
    )
    p.add_argument(
        "--rename",
        default=None,
        metavar="MAP",
        help='JSON file {"name in file": "new name"} (e.g. CuPL to CoOp names)',
    )
    p.add_argument(
        "--classes",
        default=None,
        metavar="LIST",
        help="reference class list (`imagenet`, a .json list, CLIP_benchmark's "
        "*_classnames.json, or one name per line): reports collisions and missing classes; "
        "expands generic templates",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="the dataset key to read in CLIP_benchmark's per-dataset files (templates, "
        "class names); default: --domain",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_home(p)
    p.set_defaults(func=_import)

    p = command(
        sub,
        "embed",
        help="embed a domain's descriptions with a CLIP text tower (only new texts)",
        examples="""
            aape bank embed --domain pets --clip-model aape-tiny
            aape bank embed --domain pets --clip-model ViT-B-16 --pretrained openai
            aape bank embed --domain pets --clip-model ViT-B-16 --pretrained ./vit_b16.safetensors
        """,
    )
    p.add_argument("--domain", required=True)
    add_clip(p, default_model=None)
    p.add_argument("--batch-size", type=_positive, default=256)
    p.add_argument(
        "--device", default=None, help="torch device (default: cuda if present, else cpu)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_home(p)
    p.set_defaults(func=_embed)

    p = command(
        sub,
        "stats",
        help="counts of a domain: classes, statuses, duplicates, failures, embeddings",
        examples="""
            aape bank stats --domain pets
            aape bank stats --domain pets --json
        """,
    )
    p.add_argument("--domain", required=True)
    p.add_argument("--json", action="store_true", help="print JSON")
    add_home(p)
    p.set_defaults(func=_stats)

    p = command(
        sub,
        "query",
        help="the descriptions of a class nearest to a text or an image",
        examples="""
            aape bank query --domain pets --class sphynx --text "a hairless cat" \\
                --clip-model aape-tiny
            aape bank query --domain pets --class Sphynx --image cat.jpg --top-k 3 \\
                --clip-model ViT-B-16 --pretrained openai
        """,
    )
    p.add_argument("--domain", required=True)
    p.add_argument("--class", dest="class_name", required=True, help="class name (any spelling)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", default=None, help="query text")
    what.add_argument("--image", default=None, metavar="PATH", help="query image file")
    p.add_argument("--top-k", type=_positive, default=5)
    p.add_argument(
        "--device", default=None, help="torch device (default: cuda if present, else cpu)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_clip(p, default_model=None)
    add_home(p)
    p.set_defaults(func=_query)

    p = command(
        sub,
        "export",
        help="write a domain's usable descriptions as CuPL JSON",
        examples="""
            aape bank export --domain pets --format cupl pets_cupl.json
        """,
    )
    p.add_argument("--domain", required=True)
    p.add_argument("--format", choices=["cupl"], default="cupl")
    p.add_argument("out", help="output JSON path")
    add_home(p)
    p.set_defaults(func=_export)
