"""The caption bank: every image's human captions in the Parquet store, beside the class banks.

A third table, `captions/`, next to `descriptions/` and `embeddings/` under the bank store's
root, append-only and published atomically like them. One row per (dataset, image, caption
index); a re-import writes only rows that are new or whose text, split or image file changed
(the newest row of a key wins). Caption texts are embedded into the store's existing
`embeddings` table, keyed by text hash: once per CLIP model, a text shared by two images or two
datasets once, and a re-run embeds nothing. DuckDB reads it all in place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from aape.vl.data import CaptionDataset, clean_caption
from prompt_banks.clip import LoadedCLIP
from prompt_banks.embed import EmbedReport, embed_missing
from prompt_banks.errors import UserError
from prompt_banks.paths import banks_dir, join
from prompt_banks.schema import stable_hash, text_hash
from prompt_banks.store import BankStore, utc_now

CAPTIONS_DIR = "captions"

CAPTIONS = pa.schema(
    [
        pa.field("row_key", pa.string(), nullable=False),  # hash of (dataset, image, index)
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),  # path relative to the image folder
        pa.field("caption_index", pa.int32(), nullable=False),  # position among its captions
        pa.field("split", pa.string(), nullable=False),  # train | val | test
        pa.field("source_split", pa.string(), nullable=False),  # as the source said (restval)
        pa.field("source", pa.string(), nullable=False),  # karpathy | coco | csv | jsonl | ...
        pa.field("source_image_id", pa.string()),  # cocoid / COCO image id
        pa.field("source_caption_id", pa.int64()),  # Karpathy sentid / COCO annotation id
        pa.field("raw_text", pa.string(), nullable=False),  # as the source spelled it
        pa.field("text", pa.string(), nullable=False),  # whitespace collapsed: what CLIP embeds
        pa.field("text_hash", pa.string(), nullable=False),  # key into `embeddings`
        pa.field("image_path", pa.string(), nullable=False),  # the image file
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
# What a re-import compares to decide that a stored row is current.
_CONTENT = ("text", "split", "image_path")


def caption_row_key(dataset: str, image_id: str, caption_index: int) -> str:
    return stable_hash({"dataset": dataset, "image": image_id, "caption": caption_index})


@dataclass
class ImportReport:
    dataset: str
    images: int
    captions: int
    written: int  # rows new or changed
    unchanged: int
    dropped_empty: int
    splits: dict[str, int]  # images per split

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class CaptionStore(BankStore):
    """The bank store with the caption table as a third view, `captions`."""

    @property
    def captions_dir(self) -> Path | str:
        return join(self.root, CAPTIONS_DIR)

    def _tables(self) -> list[tuple[str, Path | str, pa.Schema, str]]:
        return [*super()._tables(), ("captions", self.captions_dir, CAPTIONS, "row_key")]

    def datasets(self) -> dict[str, int]:
        """Dataset -> number of stored captions."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT dataset, count(*) FROM captions GROUP BY dataset ORDER BY dataset"
            ).fetchall()
        return {d: int(n) for d, n in rows}

    def require_dataset(self, dataset: str) -> None:
        known = self.datasets()
        if dataset not in known:
            names = ", ".join(known) or "none yet"
            raise UserError(
                f"--dataset: '{dataset}' has no captions in {self.root} (datasets: {names}); "
                "run `aape vl import-captions` first"
            )

    def _stored_content(self, dataset: str) -> dict[str, tuple[str, ...]]:
        with self.connect() as con:
            rows = con.execute(
                f"SELECT row_key, {', '.join(_CONTENT)} FROM captions WHERE dataset = ?",
                [dataset],
            ).fetchall()
        return {r[0]: tuple(r[1:]) for r in rows}

    def import_captions(self, ds: CaptionDataset) -> ImportReport:
        """Store the captions of `ds`: rows new or changed since the last import, one part."""
        stored = self._stored_content(ds.name)
        now = utc_now()
        fresh: list[dict[str, object]] = []
        for im in ds.images:
            ids = im.source_caption_ids or [None] * len(im.captions)
            for index, (raw, source_id) in enumerate(zip(im.captions, ids, strict=True)):
                text = clean_caption(raw)
                key = caption_row_key(ds.name, im.image_id, index)
                if stored.get(key) == (text, im.split, im.path):
                    continue
                fresh.append(
                    {
                        "row_key": key,
                        "dataset": ds.name,
                        "image_id": im.image_id,
                        "caption_index": index,
                        "split": im.split,
                        "source_split": im.source_split or im.split,
                        "source": ds.source,
                        "source_image_id": im.source_image_id,
                        "source_caption_id": source_id,
                        "raw_text": raw,
                        "text": text,
                        "text_hash": text_hash(text),
                        "image_path": im.path,
                        "created_at": now,
                    }
                )
        if fresh:
            table = pa.Table.from_pylist(fresh, schema=CAPTIONS)
            self._publish(table, self.captions_dir)
        splits: dict[str, int] = {}
        for im in ds.images:
            splits[im.split] = splits.get(im.split, 0) + 1
        return ImportReport(
            dataset=ds.name,
            images=len(ds.images),
            captions=ds.n_captions,
            written=len(fresh),
            unchanged=ds.n_captions - len(fresh),
            dropped_empty=ds.dropped_empty,
            splits=splits,
        )

    def caption_texts(self, dataset: str) -> list[str]:
        """The distinct caption texts of a dataset (what gets embedded)."""
        self.require_dataset(dataset)
        with self.connect() as con:
            rows = con.execute(
                "SELECT DISTINCT text FROM captions WHERE dataset = ? ORDER BY text", [dataset]
            ).fetchall()
        return [r[0] for r in rows]

    def images(
        self, dataset: str, splits: Sequence[str] | None = None
    ) -> list[tuple[str, str, str]]:
        """(image_id, split, image_path) of each image, sorted by id."""
        self.require_dataset(dataset)
        chosen = list(splits) if splits is not None else ["train", "val", "test"]
        with self.connect() as con:
            return con.execute(
                "SELECT image_id, any_value(split), any_value(image_path) FROM captions "
                "WHERE dataset = ? AND list_contains(?::VARCHAR[], split) "
                "GROUP BY image_id ORDER BY image_id",
                [dataset, chosen],
            ).fetchall()


def caption_store(home: str | os.PathLike[str] | None) -> CaptionStore:
    return CaptionStore(banks_dir(home))


def embed_captions(
    store: CaptionStore, dataset: str, clip: LoadedCLIP, **options: Any
) -> EmbedReport:
    """Embed every caption text of `dataset` not yet embedded for this CLIP (`options`: those
    of `embed_missing`, batch_size and progress)."""
    return embed_missing(store, store.caption_texts(dataset), clip, label=dataset, **options)


@dataclass
class CaptionBank:
    """The captions of a set of images for one CLIP: flat, and padded per image as the
    aggregator reads a bank. Images sorted by id; captions in caption-index order."""

    image_ids: list[str]
    texts: list[str]  # [N_cap]
    caption_image: torch.Tensor  # [N_cap] int64, the image (position in image_ids) of each
    embeddings: torch.Tensor  # [N_cap, d] float32, L2-normalised

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[N_img, n_max, d] zero-padded and its mask [N_img, n_max] (True where a caption)."""
        n_img = len(self.image_ids)
        counts = torch.bincount(self.caption_image, minlength=n_img)
        n_max = int(counts.max()) if n_img else 0
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(self.caption_image)) - starts[self.caption_image]
        bank = torch.zeros(n_img, n_max, self.dim)
        mask = torch.zeros(n_img, n_max, dtype=torch.bool)
        bank[self.caption_image, slot] = self.embeddings
        mask[self.caption_image, slot] = True
        return bank, mask

    def subset(self, keep: Sequence[int]) -> CaptionBank:
        """The captions of the images at positions `keep` (in that order)."""
        where = {old: new for new, old in enumerate(keep)}
        rows = [i for i, img in enumerate(self.caption_image.tolist()) if img in where]
        rows.sort(key=lambda i: where[int(self.caption_image[i])])
        index = torch.tensor(rows, dtype=torch.long)
        return CaptionBank(
            image_ids=[self.image_ids[i] for i in keep],
            texts=[self.texts[i] for i in rows],
            caption_image=torch.tensor(
                [where[int(self.caption_image[i])] for i in rows], dtype=torch.long
            ),
            embeddings=self.embeddings[index] if rows else self.embeddings[:0],
        )


def caption_bank(
    store: CaptionStore,
    dataset: str,
    model_id: str,
    *,
    splits: Sequence[str],
    image_ids: Sequence[str] | None = None,
) -> CaptionBank:
    """The embedded captions of a dataset's `splits` (optionally only `image_ids`), or a
    UserError when some caption has no embedding for `model_id` yet."""
    store.require_dataset(dataset)
    dim = store.model_dim(model_id)
    if dim is None:
        raise UserError(
            f"clip model: no caption of '{dataset}' is embedded for '{model_id}'; "
            f"run `aape vl embed --dataset {dataset}` with that model"
        )
    with store.connect() as con:
        table = con.sql(
            "SELECT c.image_id, c.text, e.embedding FROM captions c LEFT JOIN "
            "(SELECT text_hash, embedding FROM embeddings WHERE model_id = ?) e "
            "USING (text_hash) WHERE c.dataset = ? AND list_contains(?::VARCHAR[], c.split) "
            "ORDER BY c.image_id, c.caption_index",
            params=[model_id, dataset, list(splits)],
        ).to_arrow_table()
    if image_ids is not None:
        wanted = pa.array(sorted(set(image_ids)), pa.string())
        table = table.filter(pc.is_in(table.column("image_id"), value_set=wanted))
    if table.num_rows == 0:
        raise UserError(
            f"--dataset: '{dataset}' has no captions in split(s) {', '.join(splits)}; "
            "check the split names of the imported file"
        )
    embedding = table.column("embedding")
    if embedding.null_count:
        raise UserError(
            f"captions: {embedding.null_count} captions of '{dataset}' have no embedding for "
            f"'{model_id}'; run `aape vl embed --dataset {dataset}` with that model"
        )
    flat = pc.list_flatten(embedding.combine_chunks())
    vectors = np.array(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
    ids = table.column("image_id").to_pylist()
    order = list(dict.fromkeys(ids))  # rows arrive sorted by image id
    position = {image_id: i for i, image_id in enumerate(order)}
    return CaptionBank(
        image_ids=order,
        texts=table.column("text").to_pylist(),
        caption_image=torch.tensor([position[i] for i in ids], dtype=torch.long),
        embeddings=torch.from_numpy(vectors),
    )
