"""Datasets by name. The registry is this explicit dict; nothing registers itself on import.

Each loader takes the data root (None where the dataset installs as a package) and returns a
`Dataset`. `folder` and `csv` read any new domain (see `aape.datasets.folder`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

from aape.datasets import coop, folder, offline
from aape.datasets.base import SPLITS, Dataset, ImageRecord
from prompt_banks.errors import UserError

Loader = Callable[[str | os.PathLike[str] | None], Dataset]

DATASETS: dict[str, Loader] = {
    # CoOp's 11 few-shot datasets
    "imagenet": coop.read_imagenet,
    **{name: partial(coop.read_split_file, name) for name in coop.SPLIT_FILE_DATASETS},
    "fgvc-aircraft": coop.read_fgvc_aircraft,
    # domain generalisation targets (test only)
    "imagenet-v2": coop.read_imagenet_v2,
    "imagenet-sketch": coop.read_imagenet_sketch,
    "imagenet-a": coop.read_imagenet_a,
    "imagenet-r": coop.read_imagenet_r,
    # offline, installable
    "textile-defects": offline.read_textile,
    "animal-mnist": offline.read_animal_mnist,
    "fashion-mnist": offline.read_fashion_mnist,
    # any new domain
    "folder": folder.read_image_folder,
    "csv": folder.read_csv_manifest,
}


def load_dataset(name: str, data_root: str | os.PathLike[str] | None = None) -> Dataset:
    """The dataset registered as `name`, or a UserError listing the known names."""
    loader = DATASETS.get(name)
    if loader is None:
        raise UserError(f"dataset: '{name}' is unknown; use one of {', '.join(sorted(DATASETS))}")
    return loader(data_root)


__all__ = ["DATASETS", "SPLITS", "Dataset", "ImageRecord", "load_dataset"]
