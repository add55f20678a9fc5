"""Bring your own features: a folder of Parquet files that holds a whole `Task`.

A user with real CLIP on a GPU box computes the embeddings there, writes this folder, and trains
anywhere; the simulation writes the same format. The format (docs/bring-your-own-features.md):

    meta.json                 {"format": "aape-byof", "version": 1, "model_id": str, "d": int,
                               "name": str (optional)}
    image_features.parquet    image_id string, split string (train | val | test), label int,
                              view int (0 = centre crop / only view), embedding list<float32>[d]
    classes.parquet           label int (0..C-1, each once), name string,
                              embedding list<float32>[d]  (the "a photo of a {c}." embedding)
    prompts.parquet           label int, text string (optional, may be null),
                              embedding list<float32>[d]  (one row per description)

Instead of prompts.parquet, the bank may come from a prompt-bank store (`bank_store` +
`bank_domain`): the store's embeddings of that domain's descriptions for `model_id`.

[decision] Vectors are re-normalised on load. CLIP compares by cosine, so the L2 norm carries no
information, and open_clip's `encode_image` returns unnormalised features unless asked; a user
who forgot `normalize=True` gets the right thing. Zero, NaN and infinite vectors are refused.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from aape.data import BankId, ClassTexts, FeatureSet, Task
from prompt_banks.atomic import write_json_atomic, write_parquet_atomic
from prompt_banks.errors import UserError

log = logging.getLogger(__name__)

FORMAT = "aape-byof"
VERSION = 1
META = "meta.json"
IMAGES = "image_features.parquet"
CLASSES = "classes.parquet"
PROMPTS = "prompts.parquet"
SPLITS = ("train", "val", "test")

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("view", pa.int64(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)
CLASSES_SCHEMA = pa.schema(
    [
        pa.field("label", pa.int64(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)
PROMPTS_SCHEMA = pa.schema(
    [
        pa.field("label", pa.int64(), nullable=False),
        pa.field("text", pa.string(), nullable=True),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)
# Norms further than this from 1 are re-normalised with a warning (below it: float round-off).
NORM_TOLERANCE = 1e-3


# -- writing --------------------------------------------------------------------------------


def _embedding_column(x: torch.Tensor) -> pa.Array:
    flat = pa.array(x.detach().cpu().to(torch.float32).numpy().reshape(-1), type=pa.float32())
    offsets = pa.array(np.arange(0, x.shape[0] * x.shape[1] + 1, x.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def _write_parquet(table: pa.Table, path: Path) -> None:
    try:
        write_parquet_atomic(table, path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror}); pick a writable folder") from exc


def _images_table(task: Task) -> pa.Table:
    parts = []
    for split in SPLITS:
        fs: FeatureSet | None = getattr(task, split)
        if fs is None or len(fs.labels) == 0:
            continue
        ids = fs.image_ids or [f"{split}/{i}" for i in range(fs.n_images)]
        parts.append(
            pa.table(
                {
                    "image_id": pa.array([ids[i] for i in fs.image_index.tolist()], pa.string()),
                    "split": pa.array([split] * len(fs.labels), pa.string()),
                    "label": pa.array(fs.labels.numpy(), pa.int64()),
                    "view": pa.array(fs.view.numpy(), pa.int64()),
                    "embedding": _embedding_column(fs.x),
                },
                schema=IMAGES_SCHEMA,
            )
        )
    return pa.concat_tables(parts)


def write_task(task: Task, folder: str | os.PathLike[str]) -> Path:
    """Write `task` as a bring-your-own-features folder. Each file is published atomically and
    meta.json last, so a folder with meta.json is complete."""
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"{out}: cannot create the folder ({exc.strerror}); pick a writable one"
        ) from exc
    (out / META).unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    texts = task.texts
    classes = pa.table(
        {
            "label": pa.array(np.arange(len(texts.names)), pa.int64()),
            "name": pa.array(texts.names, pa.string()),
            "embedding": _embedding_column(texts.templates),
        },
        schema=CLASSES_SCHEMA,
    )
    _write_parquet(_images_table(task), out / IMAGES)
    _write_parquet(classes, out / CLASSES)
    if texts.bank is not None and texts.bank_mask is not None:
        label_of = torch.arange(len(texts.names)).unsqueeze(1).expand_as(texts.bank_mask)
        prompts = pa.table(
            {
                "label": pa.array(label_of[texts.bank_mask].numpy(), pa.int64()),
                "text": pa.nulls(int(texts.bank_mask.sum()), pa.string()),
                "embedding": _embedding_column(texts.bank[texts.bank_mask]),
            },
            schema=PROMPTS_SCHEMA,
        )
        _write_parquet(prompts, out / PROMPTS)
    else:
        (out / PROMPTS).unlink(missing_ok=True)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model_id": task.model_id,
        "d": texts.dim,
        "name": task.name,
    }
    write_json_atomic(meta, out / META)
    return out


# -- reading --------------------------------------------------------------------------------


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META
    if not folder.is_dir():
        raise UserError(
            f"{folder}: not a folder; pass a bring-your-own-features folder (see "
            "docs/bring-your-own-features.md)"
        )
    if not path.is_file():
        raise UserError(f"{path}: missing; a feature folder needs meta.json with model_id and d")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(
            f'{path}: not valid JSON ({exc}); write {{"model_id": ..., "d": ...}}'.replace(
                "\n", " "
            )
        ) from exc
    if not isinstance(meta, dict):
        raise UserError(f"{path}: must be a JSON object with model_id and d")
    if not isinstance(meta.get("model_id"), str) or not meta["model_id"]:
        raise UserError(
            f"{path}: field model_id must be a non-empty string (the CLIP that made the embeddings)"
        )
    d = meta.get("d")
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise UserError(
            f"{path}: field d must be a positive integer (the embedding size), got {d!r}"
        )
    return meta


def _read_table(path: Path, schema: pa.Schema, required: bool = True) -> pa.Table | None:
    if not path.is_file():
        if required:
            raise UserError(f"{path}: missing; see docs/bring-your-own-features.md for its columns")
        return None
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({exc})".replace("\n", " ")) from exc
    for field in schema:
        if field.name not in table.column_names:
            if field.nullable:
                table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
                continue
            raise UserError(
                f"{path}: column '{field.name}' is missing; expected {', '.join(schema.names)}"
            )
        col = table.column(field.name)
        if not field.nullable and col.null_count:
            raise UserError(f"{path}: column '{field.name}' has {col.null_count} empty values")
        if field.name == "embedding":
            if not (
                pa.types.is_list(col.type)
                or pa.types.is_large_list(col.type)
                or pa.types.is_fixed_size_list(col.type)
            ):
                raise UserError(
                    f"{path}: column 'embedding' must be a list of floats, got {col.type}"
                )
            continue
        try:
            table = table.set_column(
                table.column_names.index(field.name), field.name, col.cast(field.type)
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise UserError(
                f"{path}: column '{field.name}' must be {field.type}, got {col.type}"
            ) from exc
    return table.select(schema.names)


def _embeddings(table: pa.Table, path: Path, d: int) -> torch.Tensor:
    """[N, d] float32 from the embedding column, checked and re-normalised."""
    col = table.column("embedding").combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        col = col.cast(pa.list_(col.type.value_type))
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != d)
    if bad.size:
        raise UserError(
            f"{path}: field embedding has {int(lengths[bad[0]])} floats in row {int(bad[0])}, "
            f"meta.json says d = {d}; write embeddings of one CLIP model"
        )
    if len(col) == 0:
        return torch.zeros((0, d), dtype=torch.float32)
    values = pc.list_flatten(col)
    if values.null_count:
        raise UserError(f"{path}: field embedding contains null floats")
    x = torch.from_numpy(
        values.cast(pa.float32()).to_numpy(zero_copy_only=False).reshape(-1, d).copy()
    )
    norms = x.double().norm(dim=1)
    broken = torch.nonzero(~torch.isfinite(norms) | (norms == 0)).flatten()
    if len(broken):
        raise UserError(
            f"{path}: field embedding row {int(broken[0])} is zero, NaN or infinite; recompute it"
        )
    off = (norms - 1).abs() > NORM_TOLERANCE
    if off.any():
        log.warning(
            "%s: %d of %d embeddings are not unit length; re-normalised",
            path,
            int(off.sum()),
            len(x),
        )
    return torch.nn.functional.normalize(x, dim=1)


def _feature_sets(
    table: pa.Table, x: torch.Tensor, path: Path, n_classes: int
) -> dict[str, FeatureSet]:
    splits = np.asarray(table.column("split").to_pylist(), dtype=object)
    unknown = sorted(set(splits.tolist()) - set(SPLITS))
    if unknown:
        raise UserError(f"{path}: field split has {unknown!r}; use train, val or test")
    labels = table.column("label").to_numpy()
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if bad.size:
        raise UserError(
            f"{path}: field label {int(bad[0])} has no row in {CLASSES}; add the class or drop "
            "its images"
        )
    views = table.column("view").to_numpy()
    if (views < 0).any():
        raise UserError(f"{path}: field view must be >= 0")
    ids = np.asarray(table.column("image_id").to_pylist(), dtype=object)
    out: dict[str, FeatureSet] = {}
    for split in SPLITS:
        rows = np.flatnonzero(splits == split)
        if rows.size == 0:
            continue
        uniq, first, index = np.unique(ids[rows], return_index=True, return_inverse=True)
        # Keep images in file order: image_index follows first appearance.
        order = np.argsort(first)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        image_index = rank[index]
        label_of_image = np.full(len(uniq), -1)
        label_of_image[image_index] = labels[rows]
        if (label_of_image[image_index] != labels[rows]).any():
            raise UserError(
                f"{path}: an image_id of split {split} has views with different labels; one "
                "image, one label"
            )
        out[split] = FeatureSet(
            x=x[torch.from_numpy(rows)],
            labels=torch.from_numpy(labels[rows].astype(np.int64)),
            image_index=torch.from_numpy(image_index.astype(np.int64)),
            view=torch.from_numpy(views[rows].astype(np.int64)),
            image_ids=[str(u) for u in uniq[order]],
        )
    for split in ("train", "test"):
        if split not in out:
            raise UserError(
                f"{path}: no rows with split = {split}; training needs train and test images"
            )
    return out


def _bank_from_prompts(
    table: pa.Table, x: torch.Tensor, path: Path, names: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    labels = table.column("label").to_numpy()
    c = len(names)
    bad = labels[(labels < 0) | (labels >= c)]
    if bad.size:
        raise UserError(f"{path}: field label {int(bad[0])} has no row in {CLASSES}")
    counts = np.bincount(labels, minlength=c)
    missing = [names[i] for i in np.flatnonzero(counts == 0)]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UserError(
            f"{path}: {len(missing)} classes have no prompts ({shown}); add rows for them or use "
            "a bank domain"
        )
    order = np.argsort(labels, kind="stable")
    slot = np.arange(len(labels)) - np.repeat(np.cumsum(counts) - counts, counts)
    bank = torch.zeros((c, int(counts.max()), x.shape[1]), dtype=torch.float32)
    mask = torch.zeros((c, int(counts.max())), dtype=torch.bool)
    lab_sorted = torch.from_numpy(labels[order].astype(np.int64))
    slot_t = torch.from_numpy(slot.astype(np.int64))
    bank[lab_sorted, slot_t] = x[torch.from_numpy(order)]
    mask[lab_sorted, slot_t] = True
    return bank, mask


def load_task(
    folder: str | os.PathLike[str],
    *,
    bank_store: Any = None,
    bank_domain: str | None = None,
    shots: int | None = None,
    seed: int = 1,
    shots_policy: str = "error",
) -> Task:
    """Read a bring-your-own-features folder into a `Task`; with `shots`, the training split
    keeps K images per class (all their views), picked by the project's few-shot rule for `seed`
    (a class with fewer than K is an error unless `shots_policy` is "all-available").

    The prompt bank comes from `prompts.parquet`, or, when `bank_domain` is given, from that domain
    in `bank_store` (a `prompt_banks.store.BankStore` or its root path) for the folder's model_id;
    the explicit domain wins over a prompts.parquet in the folder. Any inconsistency is a one-line
    UserError that names the file and the field."""
    root = Path(folder)
    meta = _read_meta(root)
    d: int = meta["d"]
    classes_path, images_path = root / CLASSES, root / IMAGES
    classes = _read_table(classes_path, CLASSES_SCHEMA)
    images = _read_table(images_path, IMAGES_SCHEMA)
    assert classes is not None and images is not None
    labels = classes.column("label").to_numpy()
    c = classes.num_rows
    if c == 0:
        raise UserError(f"{classes_path}: no classes")
    if sorted(labels.tolist()) != list(range(c)):
        raise UserError(
            f"{classes_path}: field label must hold 0..{c - 1}, each once; renumber the classes"
        )
    order = np.argsort(labels)
    names = [str(n) for n in np.asarray(classes.column("name").to_pylist(), dtype=object)[order]]
    templates = _embeddings(classes, classes_path, d)[torch.from_numpy(order)]
    x = _embeddings(images, images_path, d)
    splits = _feature_sets(images, x, images_path, c)
    bank_id = None
    if bank_domain is not None:
        bank, mask, bank_id = _bank_from_store(bank_store, bank_domain, names, meta["model_id"], d)
    else:
        prompts_path = root / PROMPTS
        if not prompts_path.is_file():
            raise UserError(
                f"{prompts_path}: missing; write the prompt embeddings there or pass a bank "
                "domain (--bank-domain)"
            )
        prompts = _read_table(prompts_path, PROMPTS_SCHEMA)
        assert prompts is not None
        bank, mask = _bank_from_prompts(
            prompts, _embeddings(prompts, prompts_path, d), prompts_path, names
        )
    task = Task(
        name=str(meta.get("name") or root.name),
        texts=ClassTexts(
            names=names, templates=templates, bank=bank, bank_mask=mask, bank_id=bank_id
        ),
        train=splits["train"],
        test=splits["test"],
        val=splits.get("val"),
        model_id=meta["model_id"],
    )
    return task if shots is None else select_shots(task, shots, seed, shots_policy)


def keep_images(fs: FeatureSet, image_ids: set[str]) -> FeatureSet:
    """The rows of the images in `image_ids` (all their views), image_index renumbered."""
    keep_img = torch.tensor([i in image_ids for i in fs.image_ids], dtype=torch.bool)
    rows = keep_img[fs.image_index]
    uniq, new_index = torch.unique(fs.image_index[rows], return_inverse=True)
    return FeatureSet(
        x=fs.x[rows],
        labels=fs.labels[rows],
        image_index=new_index,
        view=fs.view[rows],
        image_ids=[fs.image_ids[i] for i in uniq.tolist()],
    )


def select_shots(task: Task, shots: int, seed: int, policy: str = "error") -> Task:
    """`task` with K training images per class (every view of each), chosen by
    `aape.fewshot.fewshot_manifest`: a pure function of (image ids + labels, K, seed). Fewer
    than K images in a class: see `aape.fewshot.require_shots`; the task records the policy."""
    from aape.datasets.base import ImageRecord
    from aape.fewshot import fewshot_manifest, require_shots, short_classes

    train = task.train
    if not train.image_ids:
        raise UserError(
            f"task {task.name}: training images have no ids; few-shot sampling needs them"
        )
    label_of = torch.zeros(train.n_images, dtype=torch.long)
    label_of[train.image_index] = train.labels
    records = [
        ImageRecord(image_id=i, label=y, classname=task.texts.names[y], split="train", source=i)
        for i, y in zip(train.image_ids, label_of.tolist(), strict=True)
    ]
    short = short_classes(records, shots, len(task.texts.names))
    require_shots(
        short, shots, policy, dataset=task.name, describe=lambda c: repr(task.texts.names[c])
    )
    chosen = fewshot_manifest(records, shots, seed, dataset=task.name, policy=policy).selected()
    provenance = {"shots_policy": policy, "short_classes": {str(c): n for c, n in short.items()}}
    return replace(
        task, train=keep_images(train, chosen), provenance={**task.provenance, **provenance}
    )


def _bank_from_store(
    store: Any, domain: str, names: list[str], model_id: str, d: int
) -> tuple[torch.Tensor, torch.Tensor, BankId]:
    """The bank of `names` in `domain` for `model_id`, from the prompt-bank store."""
    from prompt_banks.fingerprint import bank_fingerprint
    from prompt_banks.queries import bank_tensor
    from prompt_banks.store import BankStore

    bank_store = store if isinstance(store, BankStore) else BankStore(store)
    bank, mask = bank_tensor(bank_store, domain, names, model_id)
    if bank.shape[-1] != d:
        raise UserError(
            f"bank domain {domain}: model {model_id} has d = {bank.shape[-1]} in the store "
            f"{bank_store.root}, meta.json says d = {d}"
        )
    bank_id = BankId(domain, bank_fingerprint(bank_store, domain, names, model_id))
    return torch.nn.functional.normalize(bank, dim=-1) * mask.unsqueeze(-1), mask, bank_id
