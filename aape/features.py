"""The image-feature cache: frozen-CLIP embeddings computed once per (model, dataset, split,
image, view) and read by training and evaluation, which never run the image encoder.

Views: view 0 is the centre crop (`clip.preprocess_val`) of every image; a train image also gets
views 1..n_views, each a random resized crop (scale 0.08-1, aspect 3/4-4/3, as CoOp/Dassl) plus a
horizontal flip with p = 0.5, drawn from a private RNG seeded by (image id, view): the same view
of the same image is the same crop in every run, on every machine, for every CLIP model.

Layout (append-only Parquet parts, each published atomically: temp file, fsync, rename; under
an fsspec URL home, e.g. `s3://bucket/aape`, temp object then move):

    <features_dir(home)>/<model id, '/' -> '__'>/<dataset>/<split>/part-<time>-<uuid>.parquet

columns: id, dataset, split, label, view, model_id, dim, embedding list<float32> (L2-normalised),
created_at. Keys are (model_id, dataset, split, id, view): an extraction computes only missing
keys, so a second run, or a run with more views, computes nothing already stored. DuckDB reads a
split in place, e.g.
    SELECT id, view, embedding::FLOAT[64] AS x FROM read_parquet('<split dir>/*.parquet')

`compute_feature_rows` works on any list of (record, views) jobs and returns a table without
touching the store, so extraction can be sharded (Ray, Prefect) and each shard written with
`write_feature_rows`.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from tqdm.auto import tqdm

from aape.data import FeatureSet
from aape.datasets.base import DEFAULT_VIEWS, Dataset, ImageRecord
from prompt_banks.atomic import publish_part
from prompt_banks.clip import LoadedCLIP
from prompt_banks.errors import UserError
from prompt_banks.integrity import FIX, bad_vector_rows, check_parts
from prompt_banks.paths import features_dir, is_url, join
from prompt_banks.schema import stable_hash

log = logging.getLogger(__name__)

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
# Images decoded per written part: a crash loses at most this much work.
FLUSH_IMAGES = 2048

FEATURES = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("view", pa.int32(), nullable=False),  # 0 = centre crop
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("dim", pa.int32(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


@dataclass
class ExtractReport:
    """What one extraction did. `computed`/`cached` count feature rows (image x view);
    `skipped_images` counts images that could not be decoded (paths in `unreadable`)."""

    dataset: str
    model_id: str
    computed: int = 0
    cached: int = 0
    skipped_images: int = 0
    unreadable: list[str] = field(default_factory=list)
    images: int = 0  # images decoded and encoded
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def merge(self, other: ExtractReport) -> None:
        self.computed += other.computed
        self.cached += other.cached
        self.skipped_images += other.skipped_images
        self.unreadable.extend(other.unreadable)
        self.images += other.images
        self.seconds += other.seconds


@dataclass
class ShardResult:
    """Rows computed for a list of jobs (not yet stored) and the images that failed to decode."""

    table: pa.Table
    unreadable: list[str]
    images: int


# -- views --------------------------------------------------------------------------------------
def views_for(split: str, n_views: int) -> list[int]:
    """View ids an image of `split` gets: the centre crop, plus n_views augmented ones in train."""
    if n_views < 0:
        raise UserError(f"views: {n_views} must be 0 or more augmented views per training image")
    return list(range(n_views + 1)) if split == "train" else [0]


def input_size(clip: LoadedCLIP) -> int:
    """The square input size of the image tower (from its own centre-crop transform)."""
    for t in getattr(clip.preprocess_val, "transforms", []):
        if type(t).__name__ == "CenterCrop":
            size = t.size
            return int(size[0] if isinstance(size, list | tuple) else size)
    size = clip.model.visual.image_size
    return int(size[0] if isinstance(size, list | tuple) else size)


def augmented_view(image: Image.Image, image_id: str, view: int, size: int) -> Image.Image:
    """Random resized crop + horizontal flip, reproducible from (image_id, view) alone."""
    rng = random.Random(stable_hash(["view", image_id, view]))
    width, height = image.size
    area = width * height
    box = None
    for _ in range(10):  # torchvision's RandomResizedCrop sampling, with a private RNG
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            box = (left, top, left + w, top + h)
            break
    if box is None:  # fallback: the whole image
        box = (0, 0, width, height)
    out = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


# -- encoding -----------------------------------------------------------------------------------
def _encode(clip: LoadedCLIP, pixels: list[torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        batch = torch.stack(pixels).to(clip.device)
        x = clip.model.encode_image(batch).float()
        return torch.nn.functional.normalize(x, dim=-1).cpu()


def encode_images(
    clip: LoadedCLIP, images: list[Image.Image], batch_size: int = 64
) -> torch.Tensor:
    """L2-normalised CLIP embeddings [N, d] (float32, CPU) of the centre crops of `images`."""
    if not images:
        return torch.zeros(0, clip.dim)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        out.append(_encode(clip, [clip.preprocess_val(im.convert("RGB")) for im in chunk]))
    return torch.cat(out)


def compute_feature_rows(
    jobs: Sequence[tuple[ImageRecord, Sequence[int]]],
    clip: LoadedCLIP,
    *,
    dataset: str,
    batch_size: int = 64,
    progress: bool = True,
) -> ShardResult:
    """Encode the given views of the given records; a record that cannot be decoded is logged
    by path, counted, and skipped. The store is not touched (shard-friendly)."""
    with tqdm(total=len(jobs), desc=f"features {dataset}", unit="img", disable=not progress) as bar:
        return _compute(jobs, clip, dataset=dataset, batch_size=batch_size, bar=bar)


def _compute(
    jobs: Sequence[tuple[ImageRecord, Sequence[int]]],
    clip: LoadedCLIP,
    *,
    dataset: str,
    batch_size: int,
    bar: tqdm,
) -> ShardResult:
    size = input_size(clip)
    columns: dict[str, list] = {name: [] for name in ("id", "split", "label", "view", "embedding")}
    unreadable: list[str] = []
    pending: list[torch.Tensor] = []
    meta: list[tuple[ImageRecord, int]] = []
    images = 0

    def flush() -> None:
        if not pending:
            return
        x = _encode(clip, pending).numpy()
        for (record, view), row in zip(meta, x, strict=True):
            columns["id"].append(record.image_id)
            columns["split"].append(record.split)
            columns["label"].append(record.label)
            columns["view"].append(view)
            columns["embedding"].append(row)
        pending.clear()
        meta.clear()

    for record, views in jobs:
        bar.update(1)
        try:
            image = record.open()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            where = record.source if isinstance(record.source, str | Path) else record.image_id
            log.warning("skipping unreadable image %s (%s)", where, exc)
            unreadable.append(str(where))
            continue
        images += 1
        for view in views:
            shown = image if view == 0 else augmented_view(image, record.image_id, view, size)
            pending.append(clip.preprocess_val(shown))
            meta.append((record, view))
            if len(pending) >= batch_size:
                flush()
    flush()
    return ShardResult(
        table=_rows_table(columns, dataset, clip.model_id), unreadable=unreadable, images=images
    )


def _rows_table(columns: dict[str, list], dataset: str, model_id: str) -> pa.Table:
    n = len(columns["id"])
    dim = len(columns["embedding"][0]) if n else 0
    flat = np.asarray(columns["embedding"], dtype=np.float32).reshape(-1)
    embedding = pa.ListArray.from_arrays(
        pa.array(np.arange(n + 1, dtype=np.int32) * dim), pa.array(flat)
    )
    return pa.Table.from_arrays(
        [
            pa.array(columns["id"], pa.string()),
            pa.array([dataset] * n, pa.string()),
            pa.array(columns["split"], pa.string()),
            pa.array(columns["label"], pa.int32()),
            pa.array(columns["view"], pa.int32()),
            pa.array([model_id] * n, pa.string()),
            pa.array([dim] * n, pa.int32()),
            embedding,
            pa.array([datetime.now(UTC)] * n, pa.timestamp("us", tz="UTC")),
        ],
        schema=FEATURES,
    )


# -- the store ----------------------------------------------------------------------------------
def split_dir(
    home: str | os.PathLike[str] | None, model_id: str, dataset: str, split: str
) -> Path | str:
    """The folder of one split: a Path, or a URL when the home is an fsspec URL."""
    return join(features_dir(home), model_id.replace("/", "__"), dataset, split)


def _parts(folder: Path | str) -> tuple[list[str], fsspec.AbstractFileSystem | None]:
    """The published parts of a split, oldest first, and the fsspec filesystem of a URL folder
    (None for a local one, which pyarrow reads natively)."""
    if not is_url(folder):
        local = Path(folder)
        found = sorted(str(p) for p in local.glob("part-*.parquet")) if local.is_dir() else []
        return found, None
    fs, path = fsspec.core.url_to_fs(str(folder))
    return sorted(fs.glob(f"{path.rstrip('/')}/part-*.parquet")), fs


def _read_split(
    folder: Path | str, columns: list[str] | None = None, filters: list[tuple] | None = None
) -> pa.Table | None:
    """Every part of a split (None when there is none); `filters` are pushed down to Parquet,
    so selecting a few images of a large split reads little more than those rows."""
    parts, fs = _parts(folder)
    if not parts:
        return None
    check_parts(parts, FEATURES, fs, what="features")
    return pa.concat_tables(
        [pq.read_table(p, columns=columns, filters=filters, filesystem=fs) for p in parts]
    )


def stored_keys(
    home: str | os.PathLike[str] | None, model_id: str, dataset: str, split: str
) -> set[tuple[str, int]]:
    """(image id, view) pairs already in the cache for this model, dataset and split."""
    table = _read_split(split_dir(home, model_id, dataset, split), ["id", "view"])
    if table is None:
        return set()
    return set(zip(table.column("id").to_pylist(), table.column("view").to_pylist(), strict=True))


def write_feature_rows(home: str | os.PathLike[str] | None, table: pa.Table) -> list[str]:
    """Publish computed rows, one part per (model, dataset, split) they contain; returns the
    parts' paths (URLs under a URL home)."""
    written = []
    if table.num_rows == 0:
        return written
    model_id, dataset = table.column("model_id")[0].as_py(), table.column("dataset")[0].as_py()
    for split in sorted(set(table.column("split").to_pylist())):
        part = table.filter(pc.equal(table.column("split"), split))
        folder = split_dir(home, model_id, dataset, split)
        written.append(publish_part(part, folder, what="features"))
    return written


def missing_jobs(
    records: Iterable[ImageRecord],
    home: str | os.PathLike[str] | None,
    model_id: str,
    dataset: str,
    n_views: int,
) -> tuple[list[tuple[ImageRecord, list[int]]], int]:
    """Jobs for the (record, view) pairs not cached yet, and how many pairs are cached."""
    known: dict[str, set[tuple[str, int]]] = {}
    jobs, cached = [], 0
    for record in records:
        if record.split not in known:
            known[record.split] = stored_keys(home, model_id, dataset, record.split)
        keys = known[record.split]
        wanted = views_for(record.split, n_views)
        todo = [v for v in wanted if (record.image_id, v) not in keys]
        cached += len(wanted) - len(todo)
        if todo:
            jobs.append((record, todo))
    return jobs, cached


def extract_records(
    records: Sequence[ImageRecord],
    clip: LoadedCLIP,
    home: str | os.PathLike[str] | None,
    *,
    dataset: str,
    n_views: int = DEFAULT_VIEWS,
    batch_size: int = 64,
    progress: bool = True,
) -> ExtractReport:
    """Compute and store the missing features of `records` (any mix of splits)."""
    start = time.perf_counter()
    report = ExtractReport(dataset=dataset, model_id=clip.model_id)
    jobs, report.cached = missing_jobs(records, home, clip.model_id, dataset, n_views)
    bar = tqdm(
        total=len(jobs), desc=f"features {dataset}", unit="img", disable=not progress or not jobs
    )
    for begin in range(0, len(jobs), FLUSH_IMAGES):
        chunk = jobs[begin : begin + FLUSH_IMAGES]
        shard = _compute(chunk, clip, dataset=dataset, batch_size=batch_size, bar=bar)
        write_feature_rows(home, shard.table)
        report.computed += shard.table.num_rows
        report.images += shard.images
        report.unreadable.extend(shard.unreadable)
    bar.close()
    report.skipped_images = len(report.unreadable)
    report.seconds = time.perf_counter() - start
    return report


def extract_features(
    dataset: Dataset,
    clip: LoadedCLIP,
    home: str | os.PathLike[str] | None,
    *,
    splits: Sequence[str] | None = None,
    n_views: int = DEFAULT_VIEWS,
    batch_size: int = 64,
    progress: bool = True,
) -> ExtractReport:
    """Cache the features of every image of `splits` (default: all the dataset has)."""
    chosen = list(splits) if splits else list(dataset.splits)
    records = [r for s in chosen for r in dataset.split(s)]
    return extract_records(
        records,
        clip,
        home,
        dataset=dataset.name,
        n_views=n_views,
        batch_size=batch_size,
        progress=progress,
    )


def load_features(
    home: str | os.PathLike[str] | None,
    model_id: str,
    dataset_name: str,
    split: str,
    *,
    image_ids: Iterable[str] | None = None,
    max_view: int | None = None,
) -> FeatureSet:
    """The cached features of one split as a FeatureSet (images sorted by id, views ascending).

    `image_ids` keeps only those images, `max_view` only views 0..max_view. Duplicate rows (two
    writers racing) are read once."""
    folder = split_dir(home, model_id, dataset_name, split)
    keep_ids = set(image_ids) if image_ids is not None else None
    filters: list[tuple] = []
    if keep_ids is not None:
        filters.append(("id", "in", sorted(keep_ids)))
    if max_view is not None:
        filters.append(("view", "<=", max_view))
    table = _read_split(folder, filters=filters or None)
    if table is None:
        raise UserError(
            f"features: none cached for {dataset_name}/{split} with {model_id} under {folder}; "
            f"run `aape features --dataset {dataset_name}`"
        )
    # A selection may match no row (every chosen image unreadable): the size comes from the split.
    dims = set(
        (table if table.num_rows else _read_split(folder, ["dim"])).column("dim").to_pylist()
    )  # type: ignore[union-attr]
    if len(dims) > 1:
        raise UserError(
            f"features: {folder} mixes embedding sizes {sorted(dims)}; remove the stray parts"
        )
    ids = table.column("id").to_pylist()
    views = table.column("view").to_pylist()
    chosen: dict[tuple[str, int], int] = {}
    for row, key in enumerate(zip(ids, views, strict=True)):
        chosen.setdefault(key, row)
    order = sorted(chosen)
    rows = np.fromiter((chosen[k] for k in order), dtype=np.int64, count=len(order))
    dim = dims.pop()
    if table.num_rows and bad_vector_rows(table).any():
        raise UserError(f"features: {folder} holds vectors whose length is not their dim; {FIX}")
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    x = flat.reshape(-1, dim)[rows]
    labels = table.column("label").to_numpy()[rows]
    image_order = sorted({k[0] for k in order})
    index_of = {image_id: i for i, image_id in enumerate(image_order)}
    return FeatureSet(
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, dim),
        labels=torch.as_tensor(labels, dtype=torch.long),
        image_index=torch.tensor([index_of[k[0]] for k in order], dtype=torch.long),
        view=torch.tensor([k[1] for k in order], dtype=torch.long),
        image_ids=image_order,
    )
