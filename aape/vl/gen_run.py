"""Captioning and VQA stages against one home, as the CLI and the Prefect flow run them:
train a prefix on a caption dataset's cached features -> evaluate captions on a caption split
-> evaluate VQA on a VQAv2-format question set (features cached on first use). Fine-tuning on
VQA pairs: `aape.vl.gen_vqa_train`.

A run folder holds `prefix.pt` (the trainable weights, config, history) and `train.json`;
evaluations write `eval-<name>.json`, with the VQA protocol the run's training implies
(`vqa.protocol`); `aape.vl.gen_report` makes the Markdown table of many runs.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from aape.datasets.base import ImageRecord
from aape.features import extract_records, load_features
from aape.torch_files import load_torch_file
from aape.train import save_atomic
from aape.vl.bank import caption_store
from aape.vl.gen_config import GenConfig
from aape.vl.gen_eval import DecodeOptions, evaluate_captions, evaluate_vqa
from aape.vl.gen_train import GenResult, caption_data, check_config, train_prefix
from aape.vl.lm import FrozenLM, cpu_threads, load_lm
from aape.vl.prefix import PrefixModel
from aape.vl.tasks import CaptionSplit, load_caption_split
from aape.vl.vqa_data import VQASet
from prompt_banks.clip import CLIPRef, LoadedCLIP, load_clip
from prompt_banks.errors import UserError

Home = str | os.PathLike[str] | None
RUN_FILE = "prefix.pt"
# What every prefix.pt holds (`save_run`).
RUN_KEYS = ("config", "clip_model_id", "clip_dim", "lm_dim", "state", "train_dataset", "summary")
# Fields a run started from another (`init_from`) must share with it: the weights' shapes and
# meaning.
INIT_FIELDS = ("method", "lm", "k", "aape_tokens", "prefix_position", "aggregator")
ZERO_SHOT = "zero/few-shot (trained on captions only)"
FINE_TUNED = "fine-tuned (trained on VQA train pairs)"


@functools.lru_cache(maxsize=2)
def cached_lm(name: str, device: str, dtype: str) -> FrozenLM:
    """One load per process (a minute for SmolLM2 from its GGUF on a slow CPU)."""
    return load_lm(name, device=device, dtype=dtype)


def per_image(split: CaptionSplit) -> tuple[torch.Tensor, list[list[str]]]:
    """View-0 features [N, d] in bank image order and each image's captions."""
    feats = split.features
    first = feats.view == 0
    x = torch.zeros(split.n_images, feats.dim)
    x[feats.image_index[first]] = feats.x[first]
    captions: list[list[str]] = [[] for _ in range(split.n_images)]
    for text, img in zip(split.captions.texts, split.captions.caption_image.tolist(), strict=True):
        captions[img].append(text)
    return x, captions


def train_run(
    dataset: str, clip: CLIPRef, cfg: GenConfig, *, home: Home, out: str | os.PathLike[str],
    progress: bool = True,
) -> tuple[GenResult, Path]:  # fmt: skip
    """Train on the dataset's train split; writes <out>/prefix.pt and <out>/train.json."""
    check_config(cfg)
    init = load_init(cfg, clip.model_id)
    split = load_caption_split(
        caption_store(home), home, dataset, clip.model_id, "train", max_view=0
    )
    x, captions = per_image(split)
    bank, mask = split.captions.padded()
    lm = cached_lm(cfg.lm, cfg.device, cfg.lm_dtype)
    data = caption_data(x, captions, bank, mask, cfg.caption_prompt)
    result = train_prefix(lm, data, cfg, init=init and init["state"], progress=progress)
    folder = Path(out)
    save_run(result, folder, clip, dataset, init=init)
    return result, folder


def save_run(
    result: GenResult, folder: Path, clip: CLIPRef, dataset: str, *, vqa_trained: bool = False,
    init: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Write <folder>/prefix.pt (weights, config, history) and <folder>/train.json (all but the
    weights). `vqa_trained`: this run trained on VQA pairs; also recorded when the run it
    started from (`init`, from `load_init`) or one before that did. `extra`: more metadata."""
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    meta = {
        "config": result.config.model_dump(),
        "clip_model_id": clip.model_id,
        "clip": {"model": clip.model, "pretrained": clip.pretrained},
        "train_dataset": dataset,
        "init_from": result.config.init_from,
        "vqa_trained": vqa_trained or bool(init and init.get("vqa_trained")),
        "clip_dim": result.clip_dim,
        "lm_dim": result.lm_dim,
        "summary": result.summary(),
        **(extra or {}),
    }
    save_atomic({**meta, "state": state, "history": result.history}, folder / RUN_FILE)
    (folder / "train.json").write_text(json.dumps({**meta, "history": result.history}, indent=2))


def read_run_file(folder: str | os.PathLike[str], field: str = "--run") -> dict[str, Any]:
    """What `save_run` wrote to <folder>/prefix.pt, or a one-line UserError naming the file,
    the `field` that named it and the fix (also what `aape doctor` checks)."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise UserError(f"{field}: {path} does not exist; train one with `aape vl caption-train`")
    fix = (
        f"train the run again with `aape vl caption-train --out {path.parent}` (its train.json "
        "names the dataset and config)"
    )
    saved = load_torch_file(path, field=field, fix=fix)
    missing = [k for k in RUN_KEYS if k not in saved] if isinstance(saved, dict) else RUN_KEYS
    if missing:
        raise UserError(f"{field}: {path}: not a captioning run (no {', '.join(missing)}); {fix}")
    try:
        GenConfig(**saved["config"])
    except (TypeError, ValidationError) as exc:
        raise UserError(f"{field}: {path}: field config is not a captioning config; {fix}") from exc
    return saved


def load_run(folder: str | os.PathLike[str]) -> tuple[PrefixModel, dict[str, Any], FrozenLM]:
    saved = read_run_file(folder)
    cfg = GenConfig(**saved["config"])
    lm = cached_lm(cfg.lm, cfg.device, cfg.lm_dtype)
    model = PrefixModel(int(saved["clip_dim"]), int(saved["lm_dim"]), cfg)
    model.load_state_dict(saved["state"])
    return model.to(lm.device).eval(), saved, lm


def _check_clip(saved: dict[str, Any], model_id: str, folder: Path, field: str = "--run") -> None:
    if saved["clip_model_id"] != model_id:
        raise UserError(
            f"{field}: {folder} was trained with {saved['clip_model_id']}, not {model_id}; "
            "pass its --clip-model/--pretrained"
        )


def load_init(cfg: GenConfig, clip_model_id: str) -> dict[str, Any] | None:
    """The saved run `init_from` names (its `state` holds the weights `train_prefix` starts
    from), after checking that it fits this config and CLIP; None without init_from."""
    if cfg.init_from is None:
        return None
    saved = read_run_file(cfg.init_from, "init_from")
    _check_clip(saved, clip_model_id, Path(cfg.init_from), "init_from")
    source = GenConfig(**saved["config"])
    for name in INIT_FIELDS:
        theirs, ours = getattr(source, name), getattr(cfg, name)
        if theirs != ours:
            raise UserError(
                f"init_from: {cfg.init_from} has {name}={theirs}, this config {name}={ours}; "
                f"set {name}={theirs} or start from another run"
            )
    return saved


def vqa_features(
    vqa: VQASet, clip: LoadedCLIP, home: Home, *, progress: bool = True
) -> tuple[torch.Tensor, dict[str, int]]:
    """View-0 features of the set's images (cached under the set's name) and each one's row."""
    images = vqa.images()
    records = [ImageRecord(Path(p).name, 0, "", "test", p) for p in images]
    report = extract_records(records, clip, home, dataset=vqa.name, n_views=0, progress=progress)
    if report.unreadable:
        raise UserError(
            f"--images: {len(report.unreadable)} unreadable, e.g. {report.unreadable[0]}"
        )
    feats = load_features(
        home, clip.model_id, vqa.name, "test", image_ids=[r.image_id for r in records], max_view=0
    )
    by_id = {image_id: i for i, image_id in enumerate(feats.image_ids)}
    x = torch.zeros(len(images), feats.dim)
    x[feats.image_index] = feats.x
    row = {p: by_id[Path(p).name] for p in images}
    return x, row


def evaluate_run(
    run: str | os.PathLike[str],
    clip_ref: CLIPRef,
    *,
    home: Home,
    dataset: str | None = None,
    split: str = "test",
    vqa: VQASet | None = None,
    support: VQASet | None = None,
    shots: Sequence[int] = (0,),
    opts: DecodeOptions | None = None,
    tokenizer: str = "auto",
    max_images: int | None = None,
    domains: dict[str, str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Captioning on `dataset`/`split` and/or VQA on `vqa` (few-shot examples from `support`,
    default the set itself); writes <run>/eval-<name>.json and returns it."""
    folder = Path(run)
    model, saved, lm = load_run(folder)
    _check_clip(saved, clip_ref.model_id, folder)
    if dataset is None and vqa is None:
        raise UserError("eval: nothing to evaluate; pass --dataset and/or --questions")
    clip = load_clip(clip_ref)
    opts = opts or DecodeOptions()
    cfg = GenConfig(**saved["config"])
    out: dict[str, Any] = {"run": str(folder), "method": cfg.tag(), "config": saved["config"]}
    out["train"] = {"dataset": saved["train_dataset"], "init_from": saved.get("init_from"),
                    **saved["summary"]}  # fmt: skip
    protocol = FINE_TUNED if saved.get("vqa_trained") else ZERO_SHOT
    with cpu_threads(cfg.cpu_threads, lm.device):
        out |= _evaluations(lm, model, cfg, clip, home, dataset, split, vqa, support, shots, opts,
                            tokenizer, max_images, domains, progress)  # fmt: skip
    if "vqa" in out:
        out["vqa"]["protocol"] = protocol
    name = "-".join(p for p in (dataset, vqa.name if vqa else None) if p)
    (folder / f"eval-{name}.json").write_text(json.dumps(out, indent=2))
    return out


def _evaluations(
    lm: FrozenLM, model: PrefixModel, cfg: GenConfig, clip: LoadedCLIP, home: Home,
    dataset: str | None, split: str, vqa: VQASet | None, support: VQASet | None,
    shots: Sequence[int], opts: DecodeOptions, tokenizer: str, max_images: int | None,
    domains: dict[str, str] | None, progress: bool,
) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {}
    if dataset is not None:
        test = load_caption_split(
            caption_store(home), home, dataset, clip.model_id, split, max_view=0
        )
        x, refs = per_image(test)
        ids = test.captions.image_ids
        if max_images is not None:
            x, refs, ids = x[:max_images], refs[:max_images], ids[:max_images]
        cap = evaluate_captions(
            lm,
            model,
            x,
            ids,
            refs,
            clip,
            opts,
            tokenizer,
            cfg.caption_prompt,
            domains,  # type: ignore[arg-type]
        )  # type: ignore[arg-type]
        out["captioning"] = {"dataset": dataset, "split": split, **cap}
    if vqa is not None:
        pool = support if support is not None else vqa
        both = VQASet(vqa.name, vqa.subtype, vqa.items + [i for i in pool.items if pool is not vqa])
        x, row = vqa_features(both, clip, home, progress=progress)
        items = vqa.items[:max_images] if max_images is not None else vqa.items
        out["vqa"] = {
            "questions": vqa.name,
            "support": pool.name,
            "synthetic": vqa.synthetic,
            "by_shots": {
                str(k): evaluate_vqa(lm, model, x, row, items, pool.items, k, opts, cfg.seed)
                for k in shots
            },
        }
    return out
