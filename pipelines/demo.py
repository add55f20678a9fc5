"""`aape demo`: build the textile-defects domain end to end with the embedded defaults.

The bundled spec `textile-defects` (3 classes, CuPL's 5 questions, 2 samples each: 30 answers)
is answered by the local SmolLM2-135M; the answers are embedded by CLIP, the images of PyPI
`conformal-clip-data` are encoded once, AAPE (+ its lambda = 0 twin) and the baselines are
trained and tested on a 16-shot draw, the artifact is exported and classifies a few test images.
Prefect runs without a server (a temporary local API); the stores sit under AAPE_HOME.

Size, chosen to finish in minutes on 2 CPU cores: 16 shots x 3 classes with 4 augmented views,
100 val and 100 test images per class (300 test images). `--fast`: 2 questions x 1 sample, 4
shots, 2 views, 30 test images per class. A second run reuses every stored row and run.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from aape.config import TrainConfig
from pipelines.params import BuildDomainParams
from prompt_banks.clip import CLIPRef, load_clip
from prompt_banks.errors import UserError
from prompt_banks.paths import local_home
from prompt_banks.spec import CLIPSettings, bundled_spec_path, load_spec

DATASET = "textile-defects"
PRODUCTION_CLIP = CLIPSettings(model="ViT-B-16", pretrained="openai")
OFFLINE_CLIP = CLIPSettings(model="aape-tiny")
UNTRAINED_LABEL = (
    "untrained CLIP (aape-tiny, random weights): numbers show the pipeline runs, not accuracy"
)


def _weights_reachable(clip: CLIPSettings) -> bool:
    """Whether open_clip can get the weights: cached, or the hub answers within seconds (an
    offline machine otherwise spends a minute in download retries before failing)."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(clip.model, clip.pretrained)
    repo = (cfg.get("hf_hub") or "").strip("/")
    if repo:
        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, name), str):
                return True
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return False
    return True


def choose_clip() -> tuple[CLIPSettings, str | None]:
    """ViT-B-16/openai when its weights can be had, else aape-tiny and the one-line reason."""
    if _weights_reachable(PRODUCTION_CLIP):
        try:
            load_clip(CLIPRef(PRODUCTION_CLIP.model, PRODUCTION_CLIP.pretrained))
            return PRODUCTION_CLIP, None
        except UserError as exc:
            return OFFLINE_CLIP, f"ViT-B-16/openai weights could not be loaded ({str(exc)[:120]})"
    return (
        OFFLINE_CLIP,
        "ViT-B-16/openai weights are not cached and huggingface.co is unreachable (offline)",
    )


def demo_spec(home: Path, fast: bool) -> str:
    """The bundled textile spec; `--fast` writes a smaller copy (2 questions, 1 sample each)."""
    bundled = bundled_spec_path(DATASET)
    if not fast:
        return str(bundled)
    spec = load_spec(bundled)
    small = spec.model_copy(update={"questions": spec.questions[:2], "samples_per_question": 1})
    path = home / "demo" / "textile-defects-fast.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(small.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
    )
    return str(path)


def demo_params(home: Path, clip: CLIPSettings, fast: bool) -> BuildDomainParams:
    return BuildDomainParams(
        spec=demo_spec(home, fast),
        dataset=DATASET,
        home=str(home),
        clip=clip,
        shots=(4,) if fast else (16,),
        seeds=(1,),
        n_views=2 if fast else 4,
        max_eval_images=30 if fast else 100,
        config=TrainConfig(),
    )


def predict_some(
    artifact: str, clip: CLIPSettings, params: BuildDomainParams, per_class: int = 2
) -> list[str]:
    """Lines `image: predicted (p) | true class` for the first test images of each class."""
    from aape.inference import AAPEClassifier
    from pipelines.common import shared_clip
    from pipelines.features import sized_dataset

    ds = sized_dataset(DATASET, None, params.max_eval_images)
    picks: list[Any] = []
    for label in range(len(ds.classnames)):
        picks += [r for r in ds.splits["test"] if r.label == label][:per_class]
    clf = AAPEClassifier.load(artifact, clip=shared_clip(clip))
    preds = clf.predict([str(r.source) for r in picks], ds.classnames, top_k=1)
    return [
        f"  {r.image_id:28s} -> {p.label:28s} ({p.score:.2f})   true: {r.classname}"
        for r, p in zip(picks, preds, strict=True)
    ]


def results_table(runs: list[dict[str, Any]], untrained: bool) -> list[str]:
    title = "test accuracy" + (f"  [{UNTRAINED_LABEL}]" if untrained else "")
    lines = [title, f"  {'method':38s} {'shots':>5s} {'acc@1':>7s} {'mean recall':>12s}"]
    for r in sorted(runs, key=lambda r: (-(r["acc1"] or 0.0), r["method"])):
        recall = r.get("mean_per_class_recall")
        lines.append(
            f"  {r['method']:38s} {r['shots']:5d} {100 * r['acc1']:6.1f}% "
            f"{'-' if recall is None else f'{100 * recall:10.1f}%':>12s}"
        )
    return lines


def run_demo(home: str | None = None, fast: bool = False) -> int:
    started = time.monotonic()
    root = local_home(home, "demo runs").resolve()  # the demo trains and writes reports
    logging.getLogger("prompt_banks.clip").setLevel(logging.ERROR)  # the demo says it once, below
    print(f"AAPE demo: textile defects (PyPI conformal-clip-data), stores under {root}")
    clip, why = choose_clip()
    untrained = clip == OFFLINE_CLIP
    if why:
        print(
            f"note: {why}; running the same pipeline on aape-tiny: "
            "every result below comes from an UNTRAINED CLIP"
        )
    params = demo_params(root, clip, fast)
    print(
        f"size: {params.shots[0]} shots x 3 classes, {params.n_views} views each, "
        f"{params.max_eval_images} val + {params.max_eval_images} test images per class; "
        f"LLM: local SmolLM2-135M; Prefect: temporary local API (no server)"
    )

    from pipelines.build_domain import build_domain

    out = build_domain(params)
    gen = out.get("generate", {})
    print()
    print(
        f"bank: {gen.get('summary', 'reused')}; embedded {out['embed']['encoded']} new texts "
        f"({out['embed']['texts']} in the domain)"
    )
    print(
        f"features: {out['features']['computed_rows']} computed, "
        f"{out['features']['cached_rows']} reused"
    )
    quality = out["bank_quality"]
    print(
        f"bank quality: {100 * quality['negative_share']:.0f}% of descriptions fit another class "
        f"better; CuPL {100 * quality['cupl_acc']:.1f}% vs zero-shot "
        f"{100 * quality['zeroshot_acc']:.1f}% on val ({quality['report']})"
    )
    for line in results_table(out["evaluate"]["runs"], untrained):
        print(line)
    artifact = out["train"]["artifact"]
    health = out["train"]["health"]
    if health:
        print(
            f"AAPE health: teacher_acc {health.get('teacher_acc', float('nan')):.2f}, "
            f"student_acc {health.get('student_acc', float('nan')):.2f}"
        )
    print(f"artifact: {artifact}")
    print("predictions of the exported artifact (CLIP + artifact only, no LLM, no bank):")
    for line in predict_some(artifact, clip, params):
        print(line)
    report = out["evaluate"]["report"]
    print(f"report: {report['markdown']}")
    plots = [str(p) for p in report.values() if str(p).endswith(".png")]
    print(f"plots: {', '.join(plots) or 'none'}; table: {report['csv']}")
    if "clip_benchmark" in report:
        print(
            f"CLIP_benchmark results: {report['clip_benchmark']} (`clip_benchmark build` reads it)"
        )
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0
