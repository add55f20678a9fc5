"""The 11 datasets of CoOp's few-shot protocol and the four ImageNet variants, read from the
folder layout CoOp documents (its DATASETS.md), under one data root (`$DATA`):

    caltech-101/      101_ObjectCategories/  split_zhou_Caltech101.json
    oxford_pets/      images/                split_zhou_OxfordPets.json
    stanford_cars/    cars_train/ cars_test/ split_zhou_StanfordCars.json   (paths relative to it)
    oxford_flowers/   jpg/                   split_zhou_OxfordFlowers.json
    food-101/         images/                split_zhou_Food101.json
    sun397/           SUN397/                split_zhou_SUN397.json
    dtd/              images/                split_zhou_DescribableTextures.json
    eurosat/          2750/                  split_zhou_EuroSAT.json
    ucf101/           UCF-101-midframes/     split_zhou_UCF101.json
    fgvc_aircraft/    images/  variants.txt  images_variant_{train,val,test}.txt
    imagenet/         images/{train,val}/<wnid>/*.JPEG  classnames.txt
    imagenetv2/       imagenetv2-matched-frequency-format-val/<0..999>/*  classnames.txt
    imagenet-sketch/  images/<wnid>/*        classnames.txt
    imagenet-adversarial/  imagenet-a/<wnid>/*  classnames.txt   (200 wnid folders)
    imagenet-rendition/    imagenet-r/<wnid>/*  classnames.txt   (200 wnid folders)

A split file is {"train"|"val"|"test": [[relative_path, label, classname], ...]}. classnames.txt
has one "<wnid> <class name>" line per ImageNet class (CLIP's names; every ImageNet folder above
uses the same file). ImageNet's test split is its official val set and it has no val split, as in
CoOp. ImageNet-A and -R keep only the classes whose wnid folder exists, so their 200-class subsets
follow from the folders: labels are positions in the sorted wnid folders, as CoOp does. The
variants are test-only datasets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from aape.datasets.base import Dataset, ImageRecord, image_files, require_files
from prompt_banks.errors import UserError

COOP_HELP = (
    "prepare it as CoOp's DATASETS.md describes (github.com/KaiyangZhou/CoOp) under --data-root"
)

# registry name -> (folder under the data root, image folder inside it, split file inside it)
SPLIT_FILE_DATASETS: dict[str, tuple[str, str, str]] = {
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford-pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford-cars": ("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "flowers102": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": ("food-101", "images", "split_zhou_Food101.json"),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}


def resolve_data_root(data_root: str | os.PathLike[str] | None, dataset: str) -> Path:
    """The folder that holds the datasets: `data_root`, else `$AAPE_DATA_ROOT`."""
    root = data_root or os.environ.get("AAPE_DATA_ROOT")
    if not root:
        raise UserError(
            f"data root: dataset {dataset} is read from disk; "
            "pass --data-root DIR or set AAPE_DATA_ROOT"
        )
    return Path(root).expanduser()


def _dataset_dir(
    data_root: str | os.PathLike[str] | None, dataset: str, folder: str, marker: str
) -> Path:
    """`<root>/<folder>`, or the root itself when it already is that dataset's folder."""
    root = resolve_data_root(data_root, dataset)
    if not (root / folder).is_dir() and (root / marker).exists():
        return root
    return root / folder


def read_split_file(name: str, data_root: str | os.PathLike[str] | None) -> Dataset:
    """A dataset described by CoOp's `split_zhou_<Name>.json`."""
    folder, image_folder, split_file = SPLIT_FILE_DATASETS[name]
    base = _dataset_dir(data_root, name, folder, split_file)
    image_dir = base / image_folder
    require_files(name, [base / split_file, image_dir], COOP_HELP)
    try:
        content = json.loads((base / split_file).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"dataset {name}: cannot read {base / split_file} ({exc}); download it again"
        ) from exc
    names: dict[int, str] = {}
    splits: dict[str, list[ImageRecord]] = {}
    for split in ("train", "val", "test"):
        rows = content.get(split)
        if rows is None:
            continue
        records = []
        for row in rows:
            try:
                rel, label, classname = str(row[0]), int(row[1]), str(row[2])
            except (IndexError, TypeError, ValueError) as exc:
                raise UserError(
                    f"dataset {name}: {base / split_file} has a bad {split} row {row!r}; "
                    f"each row is [relative_path, label, classname]"
                ) from exc
            if names.setdefault(label, classname) != classname:
                raise UserError(
                    f"dataset {name}: label {label} is both '{names[label]}' and "
                    f"'{classname}' in {split_file}"
                )
            records.append(ImageRecord(rel, label, classname, split, str(image_dir / rel)))
        splits[split] = records
    return Dataset(
        name=name,
        classnames=_dense_names(name, names),
        splits=splits,
        description=f"CoOp split {base / split_file}",
    )


def _dense_names(name: str, names: dict[int, str]) -> list[str]:
    if sorted(names) != list(range(len(names))):
        raise UserError(
            f"dataset {name}: labels are not 0..{len(names) - 1}; the split file is damaged"
        )
    return [names[i] for i in range(len(names))]


def read_fgvc_aircraft(data_root: str | os.PathLike[str] | None) -> Dataset:
    """FGVCAircraft from its official variant lists (classes in variants.txt order)."""
    name = "fgvc-aircraft"
    base = _dataset_dir(data_root, name, "fgvc_aircraft", "variants.txt")
    files = {s: base / f"images_variant_{s}.txt" for s in ("train", "val", "test")}
    require_files(name, [base / "variants.txt", base / "images", *files.values()], COOP_HELP)
    classnames = [
        line.strip() for line in (base / "variants.txt").read_text().splitlines() if line.strip()
    ]
    label_of = {c: i for i, c in enumerate(classnames)}
    splits: dict[str, list[ImageRecord]] = {}
    for split, path in files.items():
        records = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            image, _, variant = line.strip().partition(" ")
            if variant not in label_of:
                raise UserError(
                    f"dataset {name}: {path} names variant '{variant}', which variants.txt lacks"
                )
            rel = f"{image}.jpg"
            records.append(
                ImageRecord(rel, label_of[variant], variant, split, str(base / "images" / rel))
            )
        splits[split] = records
    return Dataset(
        name=name,
        classnames=classnames,
        splits=splits,
        description=f"official variant lists in {base}",
    )


def read_wnid_names(path: Path) -> dict[str, str]:
    """classnames.txt: '<wnid> <class name>' per line, in file order."""
    names: dict[str, str] = {}
    for line in path.read_text().splitlines():
        wnid, _, classname = line.strip().partition(" ")
        if wnid:
            names[wnid] = classname.strip()
    return names


def _class_folders(
    split: str, folder: Path, wnids: list[str], classnames: list[str], base: Path
) -> list[ImageRecord]:
    """Records of `folder/<wnid>/*` for the given wnids; label = position in `wnids`."""
    records = []
    for label, wnid in enumerate(wnids):
        for path in image_files(folder / wnid):
            rel = path.relative_to(base).as_posix()
            records.append(ImageRecord(rel, label, classnames[label], split, str(path)))
    return records


def _wnid_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _imagenet_names(name: str, base: Path, wnids: list[str]) -> list[str]:
    names = read_wnid_names(base / "classnames.txt")
    unknown = [w for w in wnids if w not in names]
    if unknown:
        raise UserError(
            f"dataset {name}: folders {unknown[:3]} are not in {base / 'classnames.txt'}; "
            "use CoOp's classnames.txt"
        )
    return [names[w] for w in wnids]


def read_imagenet(data_root: str | os.PathLike[str] | None) -> Dataset:
    name = "imagenet"
    base = _dataset_dir(data_root, name, "imagenet", "classnames.txt")
    train_dir, val_dir = base / "images" / "train", base / "images" / "val"
    require_files(name, [base / "classnames.txt", train_dir, val_dir], COOP_HELP)
    wnids = _wnid_folders(train_dir)
    classnames = _imagenet_names(name, base, wnids)
    splits = {
        "train": _class_folders("train", train_dir, wnids, classnames, base),
        "test": _class_folders("test", val_dir, wnids, classnames, base),
    }
    return Dataset(
        name=name, classnames=classnames, splits=splits, description=f"ImageNet folders in {base}"
    )


def read_imagenet_v2(data_root: str | os.PathLike[str] | None) -> Dataset:
    """ImageNet-V2 matched-frequency: folder `<i>` holds class i of classnames.txt's order."""
    name = "imagenet-v2"
    base = _dataset_dir(data_root, name, "imagenetv2", "classnames.txt")
    image_dir = base / "imagenetv2-matched-frequency-format-val"
    require_files(name, [base / "classnames.txt", image_dir], COOP_HELP)
    classnames = list(read_wnid_names(base / "classnames.txt").values())
    records = []
    for label in range(len(classnames)):
        folder = image_dir / str(label)
        if folder.is_dir():
            for path in image_files(folder):
                records.append(
                    ImageRecord(
                        path.relative_to(base).as_posix(),
                        label,
                        classnames[label],
                        "test",
                        str(path),
                    )
                )
    return Dataset(
        name=name,
        classnames=classnames,
        splits={"test": records},
        description=f"ImageNet-V2 in {base}",
    )


def _wnid_test_set(
    name: str, folder: str, image_folder: str
) -> Callable[[str | os.PathLike[str] | None], Dataset]:
    """A test-only variant whose classes are the wnid folders present (1000 or a subset)."""

    def load(data_root: str | os.PathLike[str] | None) -> Dataset:
        base = _dataset_dir(data_root, name, folder, "classnames.txt")
        image_dir = base / image_folder
        require_files(name, [base / "classnames.txt", image_dir], COOP_HELP)
        wnids = _wnid_folders(image_dir)
        classnames = _imagenet_names(name, base, wnids)
        records = _class_folders("test", image_dir, wnids, classnames, base)
        return Dataset(
            name=name,
            classnames=classnames,
            splits={"test": records},
            description=f"{name} in {base}",
        )

    return load


read_imagenet_sketch = _wnid_test_set("imagenet-sketch", "imagenet-sketch", "images")
read_imagenet_a = _wnid_test_set("imagenet-a", "imagenet-adversarial", "imagenet-a")
read_imagenet_r = _wnid_test_set("imagenet-r", "imagenet-rendition", "imagenet-r")
