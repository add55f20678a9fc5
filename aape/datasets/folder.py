"""Datasets for any new domain: an image folder or a CSV manifest.

Image folder, either with split subfolders or without:

    root/train/<class>/*.jpg  root/val/<class>/*.jpg  root/test/<class>/*.jpg
    root/<class>/*.jpg        (no split folders: a seeded 50/20/30 split per class, as CoOp)

CSV manifest with a header line `path,label[,split]`: `path` relative to the CSV's folder (or
absolute), `label` the class name, `split` one of train/val/test (without the column: the same
seeded split). Class labels are the class names in sorted order; a class's key is its name as
spelled (case kept: folders `Cardigan/` and `cardigan/` are two classes).

The dataset's name is `folder-<basename>-<hash of the absolute path>` (or `csv-...`): two data
folders that share a basename never share cached features.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from aape.datasets.base import (
    SPLITS,
    Dataset,
    ImageRecord,
    image_files,
    require_files,
    seeded_split,
)
from prompt_banks.errors import UserError
from prompt_banks.schema import stable_hash

FOLDER_HELP = (
    "pass --data-root DIR with one sub-folder of images per class "
    "(optionally under train/ val/ test/)"
)
CSV_HELP = "pass --data-root FILE.csv with a header line path,label[,split]"


def _name(kind: str, path: Path) -> str:
    return f"{kind}-{path.name.removesuffix('.csv')}-{stable_hash(str(path.resolve()))[:8]}"


def _build(name: str, rows: list[tuple[str, str, str | None, str]], description: str) -> Dataset:
    """rows: (image_id, classname, split or None, source path) -> a Dataset with sorted labels."""
    if not rows:
        raise UserError(f"dataset {name}: no images found; {FOLDER_HELP}")
    classnames = sorted({r[1] for r in rows})
    label_of = {c: i for i, c in enumerate(classnames)}
    if any(r[2] is None for r in rows):
        by_label: dict[int, list[str]] = {}
        for image_id, classname, _, _ in rows:
            by_label.setdefault(label_of[classname], []).append(image_id)
        assigned = seeded_split(by_label, dataset=name)
        rows = [(i, c, s or assigned[i], p) for i, c, s, p in rows]
    splits: dict[str, list[ImageRecord]] = {}
    for image_id, classname, split, path in rows:
        splits.setdefault(split, []).append(
            ImageRecord(image_id, label_of[classname], classname, split, path)
        )  # type: ignore[arg-type]
    return Dataset(
        name=name,
        classnames=classnames,
        splits={s: splits[s] for s in SPLITS if s in splits},
        description=description,
        class_keys=classnames,  # the labels as spelled: "Cardigan" and "cardigan" are two
    )


def read_image_folder(data_root: str | os.PathLike[str] | None) -> Dataset:
    if data_root is None:
        raise UserError(f"data root: the folder dataset needs one; {FOLDER_HELP}")
    root = Path(data_root).expanduser()
    name = _name("folder", root)
    require_files(name, [root], FOLDER_HELP)
    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    rows: list[tuple[str, str, str | None, str]] = []
    for split in split_dirs or [None]:
        base = root / split if split else root
        for class_dir in sorted(
            p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            for path in image_files(class_dir):
                rows.append((path.relative_to(root).as_posix(), class_dir.name, split, str(path)))
    return _build(name, rows, f"image folder {root}")


def read_csv_manifest(data_root: str | os.PathLike[str] | None) -> Dataset:
    if data_root is None:
        raise UserError(f"data root: the csv dataset needs a manifest; {CSV_HELP}")
    path = Path(data_root).expanduser()
    name = _name("csv", path)
    require_files(name, [path], CSV_HELP)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        if not {"path", "label"} <= fields:
            raise UserError(f"dataset {name}: {path} header is {sorted(fields)}; {CSV_HELP}")
        rows: list[tuple[str, str, str | None, str]] = []
        for line, row in enumerate(reader, start=2):
            image, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            split = (row.get("split") or "").strip() or None
            if not image or not label:
                raise UserError(f"dataset {name}: {path} line {line} has an empty path or label")
            if split is not None and split not in SPLITS:
                raise UserError(
                    f"dataset {name}: {path} line {line} has split '{split}'; "
                    "use train, val or test"
                )
            source = Path(image) if Path(image).is_absolute() else path.parent / image
            rows.append((image, label, split, str(source)))
    return _build(name, rows, f"CSV manifest {path}")
