"""CLI: `aape train`, `aape eval`, `aape report`, `aape export`, `aape predict`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aape.cli.common import add_clip, add_home, command, int_list, positive_int
from aape.cli.task_args import add_task_args, task_factory, train_config
from aape.config import TrainConfig
from aape.protocol_names import PROTOCOLS
from prompt_banks.errors import UserError
from prompt_banks.paths import artifacts_dir, runs_dir

if TYPE_CHECKING:
    from aape.data import Task


def _print_metrics(name: str, metrics: dict) -> None:
    keys = ("acc1", "acc5", "mean_per_class_recall", "base", "new", "H")
    shown = "  ".join(f"{k}={100 * metrics[k]:.2f}" for k in keys if metrics.get(k) is not None)
    print(f"{name}: {shown}")


def handle_train(args: argparse.Namespace) -> int:
    from aape.evaluate import evaluate
    from aape.lineage import lineage
    from aape.protocols import config_dir_name, inputs_of, write_json_atomic
    from aape.train import train

    cfg = train_config(args).model_copy(update={"seed": args.seed})
    name, make = task_factory(args)
    task = make(args.shots, args.seed)
    setting = config_dir_name(cfg, inputs_of(task))  # method, bank domain, identity hash
    out = (
        Path(args.out)
        if args.out
        else runs_dir(args.home) / "train" / f"{name}-{setting}-k{args.shots}-s{args.seed}"
    )
    out.mkdir(parents=True, exist_ok=True)  # an unwritable --out fails now, not after training
    if args.force and (out / "checkpoint.pt").exists():
        (out / "checkpoint.pt").unlink()
    result = train(task, cfg, checkpoint_dir=out, progress=not args.quiet)
    metrics = evaluate(result.classifier, task.test, task.texts)
    record = {
        "task": task.name,
        "method": cfg.tag(),
        "shots": args.shots,
        "seed": args.seed,
        "model_id": task.model_id,
        "config": result.config.model_dump(),
        "health": result.health,
        "train_seconds": result.train_seconds,
        "class_names": task.texts.names,
        "complete": result.complete,
        "data": task.provenance,
        "clip": None
        if args.features_dir
        else {"model": args.clip_model, "pretrained": args.pretrained},
        "lineage": lineage(task),
        **metrics,
    }
    write_json_atomic(record, out / "metrics.json")
    _print_metrics(f"{task.name} {cfg.tag()} (test)", metrics)
    if result.health:
        h = result.health
        print(
            f"health: teacher_acc={100 * h['teacher_acc']:.2f} student_acc="
            f"{100 * h['student_acc']:.2f} (cupl {100 * h['cupl_acc']:.2f})"
        )
    print(f"run: {out}")
    return 0


def _target_factories(args: argparse.Namespace, cfg: TrainConfig) -> dict[str, Callable[[], Task]]:
    """Test-side tasks of cross-dataset / domain generalisation (their own classes)."""
    names = [t.strip() for t in (args.targets or "").split(",") if t.strip()]
    if not names or args.features_dir:
        raise UserError(
            f"--targets: protocol {args.protocol} needs --dataset and --targets NAME[,NAME...]"
        )
    domains = [d.strip() for d in (args.target_bank_domains or "").split(",") if d.strip()]
    if cfg.class_embed != "template" and len(domains) != len(names):
        raise UserError(
            f"--target-bank-domains: class_embed={cfg.class_embed} needs one bank domain per target"
        )
    from aape.tasks import load_task
    from prompt_banks.clip import CLIPRef

    ref = CLIPRef(args.clip_model, args.pretrained)

    def factory(target: str, domain: str | None) -> Callable[[], Task]:
        # shots=1: the target's train split is never used, only its test images.
        return lambda: load_task(
            dataset=target,
            home=args.home,
            clip=ref,
            bank_domain=domain,
            shots=1,
            seed=0,
            data_root=args.data_root,  # CoOp layout: one root for all datasets
            max_missing=args.max_missing,
            n_views=0,  # its train split is never used: no views,
            shots_policy="all-available",  # and any class size
        )

    return {t: factory(t, domains[i] if domains else None) for i, t in enumerate(names)}


def handle_eval(args: argparse.Namespace) -> int:
    from aape import protocols
    from aape.baselines import baseline_config
    from aape.report import write_report

    cfg = train_config(args)
    cfgs = [cfg] if args.no_lambda0 else protocols.with_lambda0(cfg)
    for extra in args.baselines.split(",") if args.baselines else []:
        cfgs.append(baseline_config(cfg, extra.strip()))
    name, make = task_factory(args)
    root = Path(args.out) if args.out else runs_dir(args.home)
    seeds = list(args.seeds)
    common = dict(seeds=seeds, force=args.force, progress=not args.quiet)
    if args.protocol == "few-shot":
        records = protocols.few_shot(make, name, cfgs, root, shots=list(args.shots), **common)
    elif args.protocol == "base-to-new":
        k = max(args.shots)
        records = protocols.base_to_new(lambda s: make(k, s), name, cfgs, root, shots=k, **common)
    else:
        k = max(args.shots)
        targets = _target_factories(args, cfg)
        records = protocols.transfer(
            lambda s: make(k, s),
            name,
            targets,
            cfgs,
            root,
            protocol=args.protocol,
            shots=k,
            **common,
        )
    for rec in records:
        _print_metrics(f"{rec['task']} {rec['method']} k={rec['shots']} seed={rec['seed']}", rec)
    paths = write_report(root)
    print(f"report: {paths['markdown']}  table: {paths['csv']}")
    return 0


def handle_report(args: argparse.Namespace) -> int:
    from aape.report import write_report

    root = Path(args.runs) if args.runs else runs_dir(args.home)
    if not root.is_dir():
        raise UserError(f"--runs: {root} does not exist; run `aape eval` first")
    paths = write_report(root, args.out)
    print(Path(paths["markdown"]).read_text(encoding="utf-8"))
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


def handle_export(args: argparse.Namespace) -> int:
    from aape.artifact import export_artifact, record_metrics, run_record
    from aape.train import load_checkpoint
    from prompt_banks.clip import CLIPRef

    result = load_checkpoint(args.run)
    saved = run_record(args.run)
    metrics = record_metrics(saved)
    ref = None
    if args.clip_model:
        ref = CLIPRef(args.clip_model, args.pretrained)
    elif saved.get("clip"):  # how `aape train` loaded CLIP, so `aape predict` can do the same
        ref = CLIPRef(saved["clip"]["model"], saved["clip"].get("pretrained"))
    out = Path(args.out) if args.out else artifacts_dir(args.home) / Path(args.run).name
    path = export_artifact(result, out, clip_ref=ref, metrics=metrics, lineage=saved.get("lineage"))
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"artifact: {path} ({size / 1024:.0f} KB, classes: {len(result.class_names)})")
    return 0


def handle_predict(args: argparse.Namespace) -> int:
    from aape.inference import AAPEClassifier

    if bool(args.classes) == bool(args.classes_file):
        raise UserError('classes: pass exactly one of --classes "a,b,c" or --classes-file FILE')
    if args.classes:
        names = [c.strip() for c in args.classes.split(",") if c.strip()]
    else:
        f = Path(args.classes_file)
        if not f.is_file():
            raise UserError(f"--classes-file: {f} does not exist; one class name per line")
        names = [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    clip = None
    if args.clip_model:
        from prompt_banks.clip import CLIPRef, load_clip

        clip = load_clip(CLIPRef(args.clip_model, args.pretrained))
    clf = AAPEClassifier.load(args.artifact, clip=clip)
    preds = clf.predict(args.images, names, top_k=args.top_k)
    if args.json:
        json.dump(
            [{"image": str(i), **p.as_dict()} for i, p in zip(args.images, preds, strict=True)],
            sys.stdout,
            indent=2,
        )
        print()
        return 0
    for image, pred in zip(args.images, preds, strict=True):
        ranked = "  ".join(f"{n} {100 * s:.1f}%" for n, s in pred.top_k)
        print(f"{image}\t{ranked}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to `sub`."""
    p = command(
        sub,
        "train",
        help="train AAPE (or a baseline) on one few-shot task",
        examples="""
        aape train --dataset textile-defects --bank-domain textile --shots 4
        aape train --features-dir my-features --set recipe=adamw --set lambda_distill=0
        aape train --dataset animal-mnist --bank-domain animals --set method=linear_probe
        aape train --dataset textile-defects --bank-domain textile --bank-snapshot 3f2a91bc7d10e4aa
        aape train --dataset dtd --data-root ~/data --shots 16 --max-missing 5 \\
            --shots-policy all-available   # a few files lost, some classes under 16 images
        """,
    )
    add_task_args(p)
    p.add_argument("--shots", type=int, default=16, help="images per class (default 16)")
    p.add_argument("--out", help="run folder (checkpoint.pt, metrics.json); resumes if present")
    p.add_argument("--force", action="store_true", help="start over instead of resuming")
    p.set_defaults(func=handle_train)

    p = command(
        sub,
        "eval",
        help="run a protocol's runs one after another in this process and write the report",
        examples="""
        aape eval --dataset textile-defects --bank-domain textile --protocol few-shot --shots 1,2,4
        aape eval --dataset animal-mnist --bank-domain animals --protocol base-to-new \\
            --baselines zeroshot,cupl --seeds 1,2,3
        aape eval --dataset imagenet --bank-domain imagenet --protocol domain-generalisation \\
            --targets imagenet-v2,imagenet-sketch --shots 16 --data-root ~/data

        the same runs in parallel (worker processes or a Ray cluster, one Prefect task each):
        `aape grid`, with the same protocols and one or many datasets
        """,
    )
    add_task_args(p)
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="few-shot",
    )
    p.add_argument("--targets", help="cross-dataset / domain generalisation: test datasets")
    p.add_argument(
        "--target-bank-domains", help="bank domain of each target (class_embed bank_mean/both)"
    )
    p.add_argument(
        "--shots",
        type=int_list,
        default=(1, 2, 4, 8, 16),
        help="comma list, default 1,2,4,8,16 (base-to-new uses the max)",
    )
    p.add_argument(
        "--seeds", type=int_list, default=(1, 2, 3), help="comma list of seeds, default 1,2,3"
    )
    p.add_argument(
        "--baselines",
        default="zeroshot,cupl",
        help="also run these baselines (zeroshot,cupl,linear_probe,linear_probe_adamw); "
        "'' for none",
    )
    p.add_argument("--no-lambda0", action="store_true", help="skip the lambda=0 companion run")
    p.add_argument("--out", help="runs root (default: $AAPE_HOME/runs)")
    p.add_argument("--force", action="store_true", help="re-run complete runs")
    p.set_defaults(func=handle_eval)

    p = command(
        sub,
        "report",
        help="aggregate run JSONs into Markdown + CSV tables and PNG plots",
        examples="aape report --runs aape-data/runs",
    )
    add_home(p)
    p.add_argument("--runs", help="runs root (default: $AAPE_HOME/runs)")
    p.add_argument("--out", help="report folder (default: <runs>/report)")
    p.set_defaults(func=handle_report)

    p = command(
        sub,
        "export",
        help="write the inference artifact (safetensors + JSON) of a run",
        examples="""
        aape export --run RUN_DIR --out textile-aape   # RUN_DIR: printed by `aape train`
        aape export --run my-run --out my-artifact --clip-model ViT-B-16 --pretrained openai
        """,
    )
    add_home(p)
    add_clip(p, default_model=None)
    p.add_argument("--run", required=True, help="folder of `aape train` (holds checkpoint.pt)")
    p.add_argument("--out", help="artifact folder (default: $AAPE_HOME/artifacts/<run name>)")
    p.set_defaults(func=handle_export)

    p = command(
        sub,
        "predict",
        help="classify images into any class names with CLIP + an artifact",
        examples="""
        aape predict --artifact textile-aape --classes "hole,stain,good" a.png b.png
        aape predict --artifact textile-aape --classes-file classes.txt --top-k 3 --json *.png
        """,
    )
    p.add_argument("--artifact", required=True, help="folder written by `aape export`")
    add_clip(p, default_model=None)
    p.add_argument("--classes", help="comma-separated class names")
    p.add_argument("--classes-file", help="file with one class name per line")
    p.add_argument("--top-k", type=positive_int, default=3, help="classes shown per image")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("images", nargs="+", help="image files")
    p.set_defaults(func=handle_predict)
