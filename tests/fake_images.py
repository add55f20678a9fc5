"""Tiny generated images and dataset layouts for the data tests (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    """A small noisy RGB image whose content depends on `seed` (so crops and views differ)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    pixels[:, : size[0] // 2, seed % 3] = 255  # a coloured half, so left/right flips matter
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def image_folder(
    root: Path, classes: list[str], per_split: dict[str, int] | None, n: int = 4
) -> Path:
    """root/[split/]<class>/img<i>.png; `per_split` None: n images per class, no split folders."""
    seed = 0
    for split, count in (per_split or {"": n}).items():
        for c in classes:
            for i in range(count):
                write_image(root / split / c / f"img{i}.png", seed)
                seed += 1
    return root


def coop_split_dataset(
    data_root: Path, folder: str, image_folder_name: str, split_file: str, classes: list[str]
) -> Path:
    """A CoOp layout: <root>/<folder>/<image folder>/<class>/*.png + split_zhou_*.json."""
    base = data_root / folder
    content: dict[str, list] = {"train": [], "val": [], "test": []}
    seed = 100
    for label, c in enumerate(classes):
        for split, count in (("train", 3), ("val", 1), ("test", 2)):
            for i in range(count):
                rel = f"{c}/{split}_{i}.png"
                write_image(base / image_folder_name / rel, seed)
                seed += 1
                content[split].append([rel, label, c])
    (base / split_file).write_text(json.dumps(content))
    return base
