"""What every dataset loader returns: class names and, per split, a list of image records.

A record names its image (a file, encoded bytes or a decoded pixel array) without opening it;
images are decoded only when features are extracted, so listing ImageNet stays cheap. Records
are plain data (picklable), so extraction can be sharded over processes or a Ray cluster.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from prompt_banks.errors import UserError

SPLITS = ("train", "val", "test")
# Augmented views cached per training image, besides the centre crop (view 0).
DEFAULT_VIEWS = 16

ImageSource = str | Path | bytes | np.ndarray


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One labelled image of one split.

    `image_id` is stable across machines (a path relative to the dataset root, or
    `<file>#<index>` for arrays) and is the key of the feature cache. `source` is a file path,
    the bytes of an encoded image, or a uint8 pixel array (H, W) or (H, W, C).
    """

    image_id: str
    label: int
    classname: str
    split: str
    source: ImageSource = field(repr=False)

    def open(self) -> Image.Image:
        """The image as RGB; raises OSError/ValueError when it cannot be decoded."""
        src = self.source
        if isinstance(src, np.ndarray):
            image = Image.fromarray(np.ascontiguousarray(src))
        elif isinstance(src, bytes):
            image = Image.open(io.BytesIO(src))
        else:
            image = Image.open(src)
        image.load()
        return image.convert("RGB")


@dataclass
class Dataset:
    """A named dataset: `classnames[label]` is the display name of label `label`, and `splits`
    maps a split name (train, val, test) to its records. Splits a dataset does not have are
    absent.

    Labels identify classes, names only show them: two labels may share a display name (ImageNet
    lists repeat "missile", "sunglasses", "crane", "maillot") and names that differ only in case
    ("Cardigan" the corgi, "cardigan" the sweater) are two classes. `class_keys[label]` is the
    class's stable key: the wnid in the ImageNet family, the label as the files spell it for
    image folders and CSV manifests, else the label number. Keys are unique."""

    name: str
    classnames: list[str]
    splits: dict[str, list[ImageRecord]]
    description: str = ""
    class_keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"Dataset {self.name}: unknown splits {sorted(unknown)}")
        n = len(self.classnames)
        if not self.class_keys:
            self.class_keys = [str(i) for i in range(n)]
        if len(self.class_keys) != n:
            raise ValueError(f"Dataset {self.name}: {len(self.class_keys)} keys for {n} classes")
        repeated = sorted(k for k, c in Counter(self.class_keys).items() if c > 1)
        if repeated:
            raise ValueError(f"Dataset {self.name}: class keys {repeated[:5]} repeat")
        for records in self.splits.values():
            for r in records:
                if not 0 <= r.label < n:
                    raise ValueError(
                        f"Dataset {self.name}: {r.image_id} has label {r.label}, {n} classes"
                    )

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def describe_class(self, label: int) -> str:
        """How messages name a class: "'crane' (n03126707)", or "'cat'" when the key is the name."""
        name, key = self.classnames[label], self.class_keys[label]
        return f"'{name}'" if key == name else f"'{name}' ({key})"

    def split(self, name: str) -> list[ImageRecord]:
        """Records of one split, or a UserError naming the splits it has."""
        if name not in self.splits:
            raise UserError(
                f"split: dataset {self.name} has no '{name}' split "
                f"(it has {', '.join(self.splits)})"
            )
        return self.splits[name]


def require_files(dataset: str, paths: Sequence[Path], how_to_get: str) -> None:
    """Raise one UserError naming every expected file or folder that is missing."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UserError(f"dataset {dataset}: missing {', '.join(missing)}; {how_to_get}")


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted, hidden files and non-images left out."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
)


# CoOp's proportions for datasets without an official split (Zhou et al., `read_and_split_data`).
SPLIT_FRACTIONS = {"train": 0.5, "val": 0.2, "test": 0.3}
SPLIT_SEED = 0


def seeded_split(
    ids_by_label: dict[int, list[str]],
    *,
    dataset: str,
    fractions: dict[str, float] | None = None,
    seed: int = SPLIT_SEED,
) -> dict[str, str]:
    """A deterministic stratified split: image id -> split name.

    Each class's ids are sorted, shuffled by a private RNG seeded with (dataset, seed, label) and
    cut by `fractions` (default CoOp's 50/20/30); it depends on nothing but its arguments."""
    fractions = fractions or SPLIT_FRACTIONS
    out: dict[str, str] = {}
    for label, ids in ids_by_label.items():
        ordered = sorted(ids)
        random.Random(f"{dataset}:{seed}:{label}").shuffle(ordered)
        n = len(ordered)
        start = 0
        names = list(fractions)
        for i, name in enumerate(names):
            stop = n if i == len(names) - 1 else start + round(n * fractions[name])
            for image_id in ordered[start:stop]:
                out[image_id] = name
            start = stop
    return out
