"""The retrieval stages against one home, as the CLI and the Prefect flow run them:
import captions -> embed (caption texts + image features) -> train (+ artifact) -> evaluate.
Each stage skips what its store already holds."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aape.vl.bank import ImportReport, caption_store, embed_captions
from aape.vl.config import RetrievalConfig
from aape.vl.data import read_captions
from aape.vl.evaluate import RetrievalRow, evaluate_split, write_results
from aape.vl.inference import export_retrieval_artifact, load_retrieval_artifact
from aape.vl.tasks import DEFAULT_VL_VIEWS, extract_caption_features, load_caption_split
from aape.vl.train import CHECKPOINT_NAME, RetrievalResult, train_retrieval
from prompt_banks.clip import CLIPRef, LoadedCLIP, is_model_id_of, load_clip
from prompt_banks.errors import UserError
from prompt_banks.paths import runs_dir

Home = str | os.PathLike[str] | None


def _loaded(clip: CLIPRef | LoadedCLIP) -> LoadedCLIP:
    return clip if isinstance(clip, LoadedCLIP) else load_clip(clip)


def import_captions(
    fmt: str,
    file: str | os.PathLike[str],
    *,
    home: Home,
    images: str | None = None,
    name: str | None = None,
    split: str | None = None,
    restval: str = "train",
) -> ImportReport:
    ds = read_captions(fmt, file, images=images, name=name, split=split, restval=restval)  # type: ignore[arg-type]
    return caption_store(home).import_captions(ds)


def embed_dataset(
    dataset: str,
    clip: CLIPRef | LoadedCLIP,
    *,
    home: Home,
    n_views: int = DEFAULT_VL_VIEWS,
    max_missing: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed the dataset's caption texts and cache its image features (both incremental);
    at most `max_missing` missing or unreadable images are left out."""
    loaded = _loaded(clip)
    store = caption_store(home)
    texts = embed_captions(store, dataset, loaded, progress=progress)
    feats, use = extract_caption_features(
        store, dataset, loaded, home, n_views=n_views, max_missing=max_missing, progress=progress
    )
    return {
        "texts": texts.to_dict(),
        "features": {"computed": feats.computed, "cached": feats.cached, **use.as_record()},
    }


@dataclass
class TrainedRun:
    result: RetrievalResult
    out: Path
    artifact: Path | None  # None for the zero-shot baseline


def train_dataset(
    dataset: str,
    clip: CLIPRef,
    cfg: RetrievalConfig,
    *,
    home: Home,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: bool = True,
) -> TrainedRun:
    """Train on the dataset's train split; the checkpoint and the artifact go to `out`
    (default `<home>/runs/retrieval/<dataset>-<tag>-s<seed>`), which a re-run resumes."""
    store = caption_store(home)
    folder = (
        Path(out)
        if out is not None
        else runs_dir(home) / "retrieval" / f"{dataset}-{cfg.tag()}-s{cfg.seed}"
    )
    if force and (folder / CHECKPOINT_NAME).exists():
        (folder / CHECKPOINT_NAME).unlink()
    train = load_caption_split(store, home, dataset, clip.model_id, "train")
    result = train_retrieval(
        train,
        cfg,
        model_id=clip.model_id,
        dataset=dataset,
        checkpoint_dir=folder,
        progress=progress,
    )
    artifact = None
    if result.model is not None:
        artifact = export_retrieval_artifact(result, folder / "artifact", clip_ref=clip)
    return TrainedRun(result, folder, artifact)


def _setting(train_dataset: str | None, test_dataset: str) -> str:
    if train_dataset is None:
        return "zero-shot"
    return "fine-tuned" if train_dataset == test_dataset else "transfer"


def evaluate_dataset(
    test_dataset: str,
    clip: CLIPRef,
    *,
    home: Home,
    artifacts: Sequence[str | os.PathLike[str]] = (),
    split: str = "test",
    zero_shot: bool = True,
    out: str | os.PathLike[str] | None = None,
) -> tuple[list[RetrievalRow], dict[str, Path]]:
    """R@1/5/10 on the dataset's `split` for CLIP zero-shot and each artifact; writes
    results.json, results.md and CLIP_benchmark files to `out` (default under runs/)."""
    store = caption_store(home)
    test = load_caption_split(store, home, test_dataset, clip.model_id, split)
    runs: list[tuple[str, RetrievalResult]] = []
    if zero_shot:
        zs = RetrievalConfig(method="zeroshot")
        runs.append(
            ("clip-zeroshot", RetrievalResult(zs, None, clip.model_id, test.features.dim, ""))
        )
    for folder in artifacts:
        result, meta = load_retrieval_artifact(folder)
        if not is_model_id_of(clip, meta["clip_model_id"]):
            raise UserError(
                f"--artifact: {folder} was trained with {meta['clip_model_id']}, not "
                f"{clip.model_id}; pass its --clip-model/--pretrained"
            )
        runs.append((result.config.tag(), result))
    if not runs:
        raise UserError("eval: nothing to evaluate; pass --artifact DIR or keep the zero-shot row")
    rows = []
    for method, result in runs:
        train_on = result.dataset or None
        rows.append(
            RetrievalRow(
                method=method,
                train_dataset=train_on,
                test_dataset=test_dataset,
                setting=_setting(train_on, test_dataset),
                metrics=evaluate_split(result, test),
                model=clip.model_id,
                n_images=test.n_images,
                n_captions=len(test.captions.texts),
                health=dict(result.health),
                config=result.config.model_dump() if result.model is not None else {},
            )
        )
    folder = Path(out) if out is not None else runs_dir(home) / "retrieval" / f"eval-{test_dataset}"
    return rows, write_results(rows, folder)
