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
has one "<wnid> <class name>" line per ImageNet class (CoOp's copy holds CLIP's names; every
ImageNet folder above uses the same file; a WordNet-style list in that format also works).

Class keys of the ImageNet family are wnids: display names repeat in every common list (CoOp's
"missile" and "sunglasses" twice, WordNet's "crane" and "maillot" twice, "Cardigan" the corgi
beside "cardigan" the sweater) and each wnid stays its own class. The classes of each dataset are
its class folders present, as CoOp reads them: ImageNet's train folders (1000, or a subset such as
ImageNet-100), Sketch's wnid folders, the 200-class subsets of ImageNet-A and -R, and V2's index
folders (folder i = line i of classnames.txt). Labels are positions in the sorted folders.
ImageNet's test split is its official val set and it has no val split, as in CoOp. The variants
are test-only datasets.
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
WNID_LINE = "each line is '<wnid> <class name>', as in CoOp's classnames.txt"

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


def read_wnid_names(path: Path, dataset: str) -> dict[str, str]:
    """classnames.txt, one "<wnid> <class name>" line per class, in file order (wnid -> name).

    Display names may repeat and differ only in case (CoOp's file repeats "missile" and
    "sunglasses"; WordNet-style lists repeat "crane" and "maillot" and hold "Cardigan" beside
    "cardigan"): the wnid is the class. A wnid given twice is an error."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"dataset {dataset}: cannot read {path} ({exc}); {COOP_HELP}") from exc
    names: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if len(parts) == 1:
            raise UserError(
                f"dataset {dataset}: {path} line {number} has no class name after "
                f"'{parts[0]}'; {WNID_LINE}"
            )
        wnid, classname = parts[0], parts[1].strip()
        if wnid in names:
            raise UserError(
                f"dataset {dataset}: {path} line {number} gives {wnid} a second time; "
                "each wnid is one class, on one line"
            )
        names[wnid] = classname
    if not names:
        raise UserError(f"dataset {dataset}: {path} is empty; {WNID_LINE}")
    return names


def _class_folders(
    split: str, folder: Path, wnids: list[str], classnames: list[str], base: Path
) -> list[ImageRecord]:
    """Records of `folder/<wnid>/*` for the given wnids (label = position in `wnids`); a wnid
    without a folder there has no image in this split."""
    records = []
    for label, wnid in enumerate(wnids):
        if not (folder / wnid).is_dir():
            continue
        for path in image_files(folder / wnid):
            rel = path.relative_to(base).as_posix()
            records.append(ImageRecord(rel, label, classnames[label], split, str(path)))
    return records


def _class_dirs(dataset: str, folder: Path) -> list[str]:
    """The class folders in `folder`, sorted (files such as ImageNet-A/R's README.txt are not
    classes), or a UserError when there is none."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        loose = "holds images but no class folders" if image_files(folder) else "is empty"
        raise UserError(
            f"dataset {dataset}: {folder} {loose}; put each class's images in its own folder "
            f"(<wnid>/ or, for ImageNet-V2, <class index>/) as CoOp's DATASETS.md shows"
        )
    return found


def _imagenet_names(dataset: str, base: Path, wnids: list[str]) -> list[str]:
    names = read_wnid_names(base / "classnames.txt", dataset)
    unknown = [w for w in wnids if w not in names]
    if unknown:
        raise UserError(
            f"dataset {dataset}: folders {unknown[:3]} are not in {base / 'classnames.txt'}; "
            "use CoOp's classnames.txt"
        )
    return [names[w] for w in wnids]


def read_imagenet(data_root: str | os.PathLike[str] | None) -> Dataset:
    """ImageNet: the classes are the wnid folders of images/train (all 1000 in a full copy, or a
    subset such as ImageNet-100), sorted as CoOp sorts them; images/val is the test split."""
    name = "imagenet"
    base = _dataset_dir(data_root, name, "imagenet", "classnames.txt")
    train_dir, val_dir = base / "images" / "train", base / "images" / "val"
    require_files(name, [base / "classnames.txt", train_dir, val_dir], COOP_HELP)
    wnids = _class_dirs(name, train_dir)
    classnames = _imagenet_names(name, base, wnids)
    stray = sorted(set(_class_dirs(name, val_dir)) - set(wnids))
    if stray:
        raise UserError(
            f"dataset {name}: {val_dir} has class folders {stray[:3]} that {train_dir} lacks; "
            "the classes are the train folders, give every val class its train folder"
        )
    splits = {
        "train": _class_folders("train", train_dir, wnids, classnames, base),
        "test": _class_folders("test", val_dir, wnids, classnames, base),
    }
    return Dataset(
        name=name,
        classnames=classnames,
        splits=splits,
        description=f"ImageNet folders in {base}",
        class_keys=wnids,
    )


def read_imagenet_v2(data_root: str | os.PathLike[str] | None) -> Dataset:
    """ImageNet-V2 matched-frequency: folder `<i>` holds the class on line i of classnames.txt
    (counting from 0). The classes are the index folders present (all 1000 in a full copy)."""
    name = "imagenet-v2"
    base = _dataset_dir(data_root, name, "imagenetv2", "classnames.txt")
    image_dir = base / "imagenetv2-matched-frequency-format-val"
    require_files(name, [base / "classnames.txt", image_dir], COOP_HELP)
    names = read_wnid_names(base / "classnames.txt", name)
    wnids = list(names)
    folders = _class_dirs(name, image_dir)
    bad = [f for f in folders if not f.isdigit() or int(f) >= len(wnids)]
    if bad:
        raise UserError(
            f"dataset {name}: {image_dir} has folders {bad[:3]} that are not class indices "
            f"0..{len(wnids) - 1} of {base / 'classnames.txt'}; extract "
            "imagenetv2-matched-frequency.tar.gz there unchanged"
        )
    by_index = sorted((int(f), f) for f in folders)
    keys = [wnids[i] for i, _ in by_index]
    classnames = [names[k] for k in keys]
    records = [
        ImageRecord(path.relative_to(base).as_posix(), label, classnames[label], "test", str(path))
        for label, (_, folder) in enumerate(by_index)
        for path in image_files(image_dir / folder)
    ]
    return Dataset(
        name=name,
        classnames=classnames,
        splits={"test": records},
        description=f"ImageNet-V2 in {base}",
        class_keys=keys,
    )


def _wnid_test_set(
    name: str, folder: str, image_folder: str
) -> Callable[[str | os.PathLike[str] | None], Dataset]:
    """A test-only variant whose classes are the wnid folders present: 1000 for ImageNet-Sketch,
    the 200-class subsets of ImageNet-A and -R (labels = positions in the sorted folders, as CoOp
    has them)."""

    def load(data_root: str | os.PathLike[str] | None) -> Dataset:
        base = _dataset_dir(data_root, name, folder, "classnames.txt")
        image_dir = base / image_folder
        require_files(name, [base / "classnames.txt", image_dir], COOP_HELP)
        wnids = _class_dirs(name, image_dir)
        classnames = _imagenet_names(name, base, wnids)
        records = _class_folders("test", image_dir, wnids, classnames, base)
        return Dataset(
            name=name,
            classnames=classnames,
            splits={"test": records},
            description=f"{name} in {base}",
            class_keys=wnids,
        )

    return load


read_imagenet_sketch = _wnid_test_set("imagenet-sketch", "imagenet-sketch", "images")
read_imagenet_a = _wnid_test_set("imagenet-a", "imagenet-adversarial", "imagenet-a")
read_imagenet_r = _wnid_test_set("imagenet-r", "imagenet-rendition", "imagenet-r")
