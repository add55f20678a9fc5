"""Build a `Task` from a named dataset: cached image features + class texts (+ the bank).

`load_task` extracts whatever features are missing (only the few-shot train images, their
augmented views, and the val/test images), applies the few-shot manifest, embeds the template
"a photo of a {c}." for every class, and, when a bank domain is given, reads the class's prompt
embeddings from the store. A dataset without a train split (the ImageNet variants) gives an
evaluation-only task with an empty train set.

Classes are labels, keyed by `Dataset.class_keys`; a bank name several classes bear reaches each
of them (a warning names them and the run records it). Missing or unreadable images fail the task
unless `max_missing` allows them (`aape.missing_images`), and more shots than a class has fail it
unless `shots_policy` is "all-available" (`aape.fewshot.require_shots`). `Task.provenance` records
what was used: images per split, the allowance, the shots policy and its short classes, the class
keys and the shared prompts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from aape.data import BankId, ClassTexts, FeatureSet, Task
from aape.datasets import SPLITS, Dataset, ImageRecord, load_dataset
from aape.datasets.base import DEFAULT_VIEWS
from aape.features import ExtractReport, load_features, split_dir
from aape.fewshot import (
    FewShotManifest,
    fewshot_manifest,
    require_shots,
    short_classes,
    write_manifest,
)
from aape.missing_images import ImageUse, Key, extract_usable, without
from prompt_banks.clip import CLIPRef, LoadedCLIP, load_clip
from prompt_banks.embed import encode_texts, template_text
from prompt_banks.errors import UserError
from prompt_banks.fingerprint import bank_fingerprint
from prompt_banks.paths import banks_dir
from prompt_banks.queries import bank_tensor, shared_bank_names
from prompt_banks.store import BankStore

log = logging.getLogger(__name__)


@dataclass
class PreparedTask:
    """A task plus what it took to build: the extraction report (unreadable images are counted
    there) and the few-shot manifest with the path of its JSON artifact."""

    task: Task
    extraction: ExtractReport
    manifest: FewShotManifest | None
    manifest_path: Path | str | None  # a URL under an fsspec URL home
    images: ImageUse | None = None


def class_texts(
    clip: LoadedCLIP,
    classnames: list[str],
    *,
    bank_domain: str | None,
    home: str | os.PathLike[str] | None,
) -> ClassTexts:
    """Template embeddings of `classnames`, and their bank when `bank_domain` is given."""
    templates = encode_texts(clip, [template_text(c) for c in classnames]).embeddings
    if bank_domain is None:
        return ClassTexts(names=list(classnames), templates=templates)
    store = BankStore(banks_dir(home))
    bank, mask = bank_tensor(store, bank_domain, classnames, clip.model_id)
    if bank.shape[-1] != clip.dim:
        raise UserError(
            f"bank domain {bank_domain}: the store {store.root} holds {clip.model_id} embeddings "
            f"of d = {bank.shape[-1]}, the CLIP has d = {clip.dim}; embed the domain again "
            "(`aape bank embed`) under a fresh --home"
        )
    bank_id = BankId(bank_domain, bank_fingerprint(store, bank_domain, classnames, clip.model_id))
    return ClassTexts(
        names=list(classnames), templates=templates, bank=bank, bank_mask=mask, bank_id=bank_id
    )


def shared_prompts(ds: Dataset) -> dict[str, list[str]]:
    """Bank names that several classes of `ds` bear -> those classes' keys. Each of them gets
    the name's prompts; the run says so (a warning line and its record)."""
    shared = {
        name: [ds.class_keys[i] for i in labels]
        for name, labels in shared_bank_names(ds.classnames).items()
    }
    if shared:
        listed = "; ".join(f"'{n}' <- {', '.join(keys)}" for n, keys in sorted(shared.items()))
        log.warning(
            "bank: %d names are shared by %d classes of %s, which get the same prompts: %s",
            len(shared),
            sum(len(k) for k in shared.values()),
            ds.name,
            listed,
        )
    return shared


def _empty(dim: int) -> FeatureSet:
    none = torch.zeros(0, dtype=torch.long)
    return FeatureSet(
        x=torch.zeros(0, dim), labels=none, image_index=none.clone(), view=none.clone()
    )


def trim_eval(ds: Dataset, max_eval_images: int | None) -> Dataset:
    """`ds` with at most `max_eval_images` per class in every split but train when given (the
    first ones in the loader's order, which is deterministic): a demo- or test-sized run."""
    if max_eval_images is None:
        return ds
    splits = {}
    for split, records in ds.splits.items():
        if split == "train":
            splits[split] = records
            continue
        seen: dict[int, int] = {}
        kept = []
        for r in records:
            if seen.get(r.label, 0) < max_eval_images:
                seen[r.label] = seen.get(r.label, 0) + 1
                kept.append(r)
        splits[split] = kept
    return replace(ds, splits=splits)


def _picked(train: list[ImageRecord], manifests: Iterable[FewShotManifest]) -> list[ImageRecord]:
    """The train records any of `manifests` selects, in the loader's order."""
    chosen = set().union(*(m.selected() for m in manifests))
    return [r for r in train if r.image_id in chosen]


def task_records(
    dataset: Dataset,
    *,
    shots: int | None,
    seeds: Iterable[int],
    max_eval_images: int | None = None,
    splits: Iterable[str] = SPLITS,
) -> list[ImageRecord]:
    """The records of `splits` that the tasks on `dataset` with `shots` (None = the whole train
    split) and each of `seeds` read: the few-shot train picks and every eval image (at most
    `max_eval_images` per class, see `trim_eval`), split by split."""
    ds = trim_eval(dataset, max_eval_images)
    records: list[ImageRecord] = []
    for split in splits:
        found = ds.splits.get(split, [])
        if split == "train" and shots is not None:
            found = _picked(
                found, (fewshot_manifest(found, shots, s, dataset=ds.name) for s in seeds)
            )
        records += found
    return records


def prepare_task(
    *,
    dataset: str | Dataset,
    home: str | os.PathLike[str] | None,
    clip: CLIPRef | LoadedCLIP,
    bank_domain: str | None,
    shots: int | None,
    seed: int,
    data_root: str | None = None,
    n_views: int | None = None,
    progress: bool = True,
    max_missing: int = 0,
    shots_policy: str = "error",
) -> PreparedTask:
    """`load_task` with its extraction report and manifest (see the module doc)."""
    loaded = clip if isinstance(clip, LoadedCLIP) else load_clip(clip)
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data_root)
    views = DEFAULT_VIEWS if n_views is None else n_views
    # Texts first: a missing bank is refused before minutes of image encoding.
    texts = class_texts(loaded, ds.classnames, bank_domain=bank_domain, home=home)
    shared = shared_prompts(ds) if bank_domain is not None else {}
    all_train = ds.splits.get("train", [])
    evaluation = task_records(ds, shots=None, seeds=[], splits=("val", "test"))
    pick: dict[str, Any] = {"manifest": None, "short": {}}

    def select(unusable: set[Key]) -> list[ImageRecord]:
        train = without(all_train, unusable)
        if shots is not None and all_train:
            pick["short"] = short_classes(train, shots, ds.n_classes)
            require_shots(
                pick["short"], shots, shots_policy, dataset=ds.name, describe=ds.describe_class
            )
            pick["manifest"] = fewshot_manifest(
                train, shots, seed, dataset=ds.name, policy=shots_policy
            )
            train = _picked(train, [pick["manifest"]])
        return train + without(evaluation, unusable)

    records, report, use = extract_usable(
        select,
        loaded,
        home,
        dataset=ds.name,
        max_missing=max_missing,
        n_views=views,
        progress=progress,
    )
    if use.unusable:
        log.warning("%s: %d missing or unreadable images left out", ds.name, len(use.unusable))
    manifest: FewShotManifest | None = pick["manifest"]
    ids: dict[str, list[str]] = {}
    for r in records:
        ids.setdefault(r.split, []).append(r.image_id)

    def features(split: str, max_view: int | None = None) -> FeatureSet:
        found = load_features(
            home, loaded.model_id, ds.name, split, image_ids=ids[split], max_view=max_view
        )
        if found.x.shape[1] != loaded.dim:
            raise UserError(
                f"features: {split_dir(home, loaded.model_id, ds.name, split)} holds d = "
                f"{found.x.shape[1]}, the CLIP {loaded.model_id} has d = {loaded.dim}; delete "
                "that folder and run `aape features` again"
            )
        return found

    provenance = {
        "dataset": ds.name,
        "class_keys": list(ds.class_keys),
        **use.as_record(),
        "shots_policy": shots_policy if manifest is not None else None,
        "short_classes": {ds.class_keys[c]: n for c, n in pick["short"].items()},
        "shared_prompts": shared,
    }
    task = Task(
        name=ds.name,
        texts=texts,
        train=features("train", views) if "train" in ids else _empty(loaded.dim),
        test=features("test") if "test" in ids else _empty(loaded.dim),
        val=features("val") if "val" in ids else None,
        model_id=loaded.model_id,
        provenance=provenance,
    )
    # Written once the task stands: a refused task (a damaged cache, ...) leaves the home as it was.
    manifest_file = write_manifest(manifest, home) if manifest is not None else None
    return PreparedTask(
        task=task, extraction=report, manifest=manifest, manifest_path=manifest_file, images=use
    )


def load_task(
    *,
    dataset: str | Dataset,
    home: str | os.PathLike[str] | None,
    clip: CLIPRef | LoadedCLIP,
    bank_domain: str | None,
    shots: int | None,
    seed: int,
    data_root: str | None = None,
    n_views: int | None = None,
    max_missing: int = 0,
    shots_policy: str = "error",
) -> Task:
    """A few-shot task on `dataset`: `shots` images per class drawn by `seed` (None = the whole
    train split), each with the centre crop and `n_views` augmented views (default 16)."""
    return prepare_task(
        dataset=dataset, home=home, clip=clip, bank_domain=bank_domain, shots=shots, seed=seed,
        data_root=data_root, n_views=n_views, max_missing=max_missing, shots_policy=shots_policy,
    ).task  # fmt: skip
