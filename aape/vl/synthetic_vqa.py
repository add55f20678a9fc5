"""A SYNTHETIC question-answered set for the offline images, in VQAv2's file format: the same
images as `aape.vl.synthetic` captions (templated from the labels), two questions each (see
`write_synthetic_vqa`), per split: the train split's questions are for fine-tuning
(`aape vl vqa-train`) and few-shot examples, the test split's (other images, other ids) for
evaluation. It shows that the VQA pipeline runs; its numbers mean nothing more."""

from __future__ import annotations

import os
from pathlib import Path

from aape.datasets import load_dataset
from aape.vl.synthetic import synthetic_captions
from aape.vl.vqa_data import write_synthetic_vqa


def synthetic_vqa(
    dataset: str,
    image_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    max_per_split: int | None = None,
    data_root: str | None = None,
) -> dict[str, dict[str, str]]:
    """VQAv2-format files per split of the offline dataset under out_dir/<split>/: the
    questions, annotations and image folder paths, for `--questions/--annotations/--images`."""
    ds = load_dataset(dataset, data_root)
    captions = synthetic_captions(ds, image_dir, max_per_split=max_per_split)
    label = {r.image_id: r.classname for records in ds.splits.values() for r in records}
    names = sorted(set(label.values()))
    out: dict[str, dict[str, str]] = {}
    first_id = 1
    for split in sorted({im.split for im in captions.images}):
        rows = [(im.path, split, label[im.image_id]) for im in captions.split(split)]
        q, a, images = write_synthetic_vqa(
            rows, names, Path(out_dir) / split, subtype=f"synthetic{split}", first_id=first_id
        )
        first_id += len(rows)
        out[split] = {"questions": str(q), "annotations": str(a), "images": str(images)}
    return out
