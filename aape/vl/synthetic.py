"""SYNTHETIC captions for real offline images: templated from a classification dataset's labels.

For end-to-end runs on real pixels without COCO or Flickr30k: every image of an offline dataset
(textile-defects, animal-mnist, ...) gets a few captions written from its class name by fixed
templates. They describe the label, nothing of the picture, so retrieval on them is label
retrieval: the numbers only show that the pipeline runs. The dataset's name ends in
`-synthetic-captions` and its description says so.

Images held as pixel arrays (animal-mnist) are written once as PNG files under `image_dir`, so
that every caption dataset names its images by file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from aape.datasets import load_dataset
from aape.datasets.base import Dataset, ImageRecord
from aape.vl.data import CaptionDataset, CaptionImage

TEMPLATES = (
    "a photo of {c}.",
    "a picture showing {c}.",
    "an image of {c}.",
    "a close-up photo of {c}.",
    "there is {c} in this picture.",
    "a low resolution photo of {c}.",
    "a cropped photo of {c}.",
    "{c}, photographed.",
)
SUFFIX = "-synthetic-captions"


def with_article(name: str) -> str:
    """`a {c}` for a count noun; class names that already read as a phrase stay as they are."""
    if " " in name:
        return name
    return ("an " if name[0].lower() in "aeiou" else "a ") + name


def _image_file(record: ImageRecord, image_dir: Path) -> str:
    if isinstance(record.source, str | Path):
        return str(record.source)
    path = image_dir / (record.image_id.replace("/", "_").replace("#", "_") + ".png")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
        record.open().save(tmp)
        os.replace(tmp, path)
    return str(path)


def synthetic_captions(
    dataset: str | Dataset,
    image_dir: str | os.PathLike[str],
    *,
    captions_per_image: int = 5,
    max_per_split: int | None = None,
    data_root: str | None = None,
) -> CaptionDataset:
    """The offline dataset's images with `captions_per_image` templated captions each (a seeded
    choice of templates per image); at most `max_per_split` images per split when given (the
    first ones of each class in turn, so every class is kept)."""
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data_root)
    folder = Path(image_dir)
    images: list[CaptionImage] = []
    for split, records in ds.splits.items():
        chosen = records
        if max_per_split is not None:
            by_label: dict[int, list[ImageRecord]] = {}
            for r in records:
                by_label.setdefault(r.label, []).append(r)
            rounds = zip(*by_label.values(), strict=False)
            chosen = [r for row in rounds for r in row][:max_per_split]
        for record in chosen:
            rng = random.Random(f"{ds.name}:{record.image_id}")
            picks = rng.sample(TEMPLATES, min(captions_per_image, len(TEMPLATES)))
            phrase = with_article(record.classname)
            images.append(
                CaptionImage(
                    image_id=record.image_id,
                    split=split,
                    path=_image_file(record, folder / ds.name),
                    captions=[t.format(c=phrase) for t in picks],
                    source_split=split,
                )
            )
    return CaptionDataset(
        name=ds.name + SUFFIX,
        images=images,
        source="synthetic",
        description=f"SYNTHETIC captions templated from the labels of {ds.name} (not human)",
    )
