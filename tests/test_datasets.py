"""Datasets: CoOp layouts, ImageNet and its variants, folders, CSV manifests, offline packages."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest
from fake_images import coop_split_dataset, image_folder, write_image

from aape.datasets import DATASETS, load_dataset
from aape.datasets.base import seeded_split
from aape.datasets.offline import FASHION_DIR
from aape.features import extract_features, load_features
from prompt_banks.errors import UserError


def test_registry_is_an_explicit_dict_of_every_dataset() -> None:
    coop11 = {"imagenet", "caltech101", "oxford-pets", "stanford-cars", "flowers102", "food101",
              "fgvc-aircraft", "sun397", "dtd", "eurosat", "ucf101"}  # fmt: skip
    variants = {"imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r"}
    assert coop11 | variants | {
        "textile-defects",
        "animal-mnist",
        "fashion-mnist",
        "folder",
        "csv",
    } == set(DATASETS)


def test_coop_split_file(tmp_path: Path) -> None:
    coop_split_dataset(
        tmp_path, "dtd", "images", "split_zhou_DescribableTextures.json", ["banded", "zigzagged"]
    )
    ds = load_dataset("dtd", tmp_path)
    assert ds.name == "dtd" and ds.classnames == ["banded", "zigzagged"]
    assert {s: len(r) for s, r in ds.splits.items()} == {"train": 6, "val": 2, "test": 4}
    record = ds.splits["test"][0]
    assert record.image_id == "banded/test_0.png" and record.label == 0 and record.split == "test"
    assert record.open().mode == "RGB"
    # --data-root may also be the dataset's own folder
    assert load_dataset("dtd", tmp_path / "dtd").classnames == ds.classnames


def test_coop_split_file_relative_to_the_dataset_folder(tmp_path: Path) -> None:
    coop_split_dataset(
        tmp_path,
        "stanford_cars",
        "",
        "split_zhou_StanfordCars.json",
        ["2012 Audi S4", "2000 AM General Hummer"],
    )
    ds = load_dataset("stanford-cars", tmp_path)
    assert ds.classnames == ["2012 Audi S4", "2000 AM General Hummer"]
    assert Path(str(ds.splits["train"][0].source)).is_file()


def test_missing_dataset_names_the_files_and_where_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"split_zhou_EuroSAT\.json.*CoOp"):
        load_dataset("eurosat", tmp_path)
    with pytest.raises(UserError, match="data root"):
        load_dataset("eurosat", None)
    with pytest.raises(UserError, match="unknown; use one of"):
        load_dataset("not-a-dataset", tmp_path)


def test_fgvc_aircraft_variant_lists(tmp_path: Path) -> None:
    base = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Cessna 172"]
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    lines = {
        "train": ["0001 707-320", "0002 Cessna 172"],
        "val": ["0003 A300B4"],
        "test": ["0004 Cessna 172"],
    }
    for split, rows in lines.items():
        (base / f"images_variant_{split}.txt").write_text("\n".join(rows) + "\n")
        for row in rows:
            write_image(base / "images" / f"{row.split()[0]}.jpg", 1)
    ds = load_dataset("fgvc-aircraft", tmp_path)
    assert ds.classnames == variants
    assert [(r.image_id, r.label, r.classname) for r in ds.splits["train"]] == [
        ("0001.jpg", 0, "707-320"),
        ("0002.jpg", 2, "Cessna 172"),
    ]


def _imagenet_names(base: Path) -> None:
    base.mkdir(parents=True, exist_ok=True)
    (base / "classnames.txt").write_text(
        "n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n"
    )


def test_imagenet_train_and_val_folders(tmp_path: Path) -> None:
    base = tmp_path / "imagenet"
    _imagenet_names(base)
    for split in ("train", "val"):
        for wnid in ("n01443537", "n01440764", "n01484850"):
            write_image(base / "images" / split / wnid / "a.JPEG", 3)
    ds = load_dataset("imagenet", tmp_path)
    assert ds.classnames == ["tench", "goldfish", "great white shark"]  # sorted wnids
    assert set(ds.splits) == {"train", "test"}  # the official val set is the test split
    assert ds.splits["test"][0].image_id == "images/val/n01440764/a.JPEG"


def test_imagenet_variants_keep_their_class_subsets(tmp_path: Path) -> None:
    for folder, images in (
        ("imagenet-adversarial", "imagenet-a"),
        ("imagenet-rendition", "imagenet-r"),
        ("imagenet-sketch", "images"),
    ):
        _imagenet_names(tmp_path / folder)
        for wnid in ("n01484850", "n01440764"):  # a 2-class subset of the 3 names
            write_image(tmp_path / folder / images / wnid / "x.jpg", 4)
        (tmp_path / folder / images / "README.txt").write_text("not a class")
    for name in ("imagenet-a", "imagenet-r", "imagenet-sketch"):
        ds = load_dataset(name, tmp_path)
        assert ds.classnames == ["tench", "great white shark"], name
        assert list(ds.splits) == ["test"] and [r.label for r in ds.splits["test"]] == [0, 1]
    v2 = tmp_path / "imagenetv2"
    _imagenet_names(v2)
    write_image(v2 / "imagenetv2-matched-frequency-format-val" / "2" / "y.jpeg", 5)
    ds = load_dataset("imagenet-v2", tmp_path)  # folder "2" = line 2 of classnames.txt
    assert ds.classnames == ["great white shark"] and ds.class_keys == ["n01484850"]
    assert [(r.label, r.classname) for r in ds.splits["test"]] == [(0, "great white shark")]


def test_image_folder_with_and_without_split_folders(tmp_path: Path) -> None:
    image_folder(tmp_path / "a", ["zebra", "cat"], {"train": 2, "test": 1})
    ds = load_dataset("folder", tmp_path / "a")
    assert ds.classnames == ["cat", "zebra"] and {s: len(r) for s, r in ds.splits.items()} == {
        "train": 4,
        "test": 2,
    }
    assert ds.name.startswith("folder-a-")
    image_folder(tmp_path / "b", ["cat", "dog"], None, n=10)
    ds = load_dataset("folder", tmp_path / "b")
    assert {s: len(r) for s, r in ds.splits.items()} == {"train": 10, "val": 4, "test": 6}
    again = load_dataset("folder", tmp_path / "b")
    assert [r.image_id for r in again.splits["train"]] == [r.image_id for r in ds.splits["train"]]


def test_csv_manifest(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / "img" / f"{i}.png", i)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label,split\nimg/0.png,weft defect,train\nimg/1.png,good,train\nimg/2.png,good,test\n"
    )
    ds = load_dataset("csv", manifest)
    assert ds.classnames == ["good", "weft defect"]
    assert [(r.image_id, r.label) for r in ds.splits["train"]] == [
        ("img/0.png", 1),
        ("img/1.png", 0),
    ]
    assert ds.splits["test"][0].open().size == (48, 40)
    (tmp_path / "bad.csv").write_text("file,class\nimg/0.png,good\n")
    with pytest.raises(UserError, match="header"):
        load_dataset("csv", tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("path,label,split\nimg/0.png,good,holdout\n")
    with pytest.raises(UserError, match="holdout"):
        load_dataset("csv", tmp_path / "bad2.csv")


def test_seeded_split_is_deterministic_and_stratified() -> None:
    ids = {0: [f"a{i}" for i in range(10)], 1: [f"b{i}" for i in range(20)]}
    first = seeded_split(ids, dataset="x")
    assert first == seeded_split({1: list(reversed(ids[1])), 0: ids[0]}, dataset="x")
    assert first != seeded_split(ids, dataset="y")
    counts = Counter((i[0], s) for i, s in first.items())
    assert counts == {
        ("a", "train"): 5,
        ("a", "val"): 2,
        ("a", "test"): 3,
        ("b", "train"): 10,
        ("b", "val"): 4,
        ("b", "test"): 6,
    }


def test_unreadable_image_is_skipped_and_counted(tmp_path: Path, home: Path, tiny_clip) -> None:
    root = image_folder(tmp_path / "d", ["cat", "dog"], {"test": 2})
    bad = root / "test" / "dog" / "broken.png"
    bad.write_bytes(b"this is not a png")
    ds = load_dataset("folder", root)
    report = extract_features(ds, tiny_clip, home, n_views=0, progress=False)
    assert report.skipped_images == 1 and report.unreadable == [str(bad)]
    assert report.computed == 4
    fs = load_features(home, tiny_clip.model_id, ds.name, "test")
    assert fs.n_images == 4 and "test/dog/broken.png" not in fs.image_ids


def test_textile_defects_from_its_package() -> None:
    ds = load_dataset("textile-defects")
    assert ds.classnames == [
        "nominal fabric",
        "fabric with a local defect",
        "fabric with a global defect",
    ]
    sizes = {s: len(r) for s, r in ds.splits.items()}
    assert sizes == {"train": 1000, "val": 400, "test": 600}
    assert Counter(r.label for r in ds.splits["test"]) == {0: 300, 1: 150, 2: 150}
    assert ds.splits["train"][0].open().size == (250, 250)


@pytest.mark.skipif(
    importlib.util.find_spec("animal_mnist") is None,
    reason="animal-mnist missing: pip install --no-deps animal-mnist==0.4 (infra/setup.sh does)",
)
def test_animal_mnist_from_its_package() -> None:
    ds = load_dataset("animal-mnist")
    assert ds.classnames[:3] == ["bear", "bird", "cat"] and ds.n_classes == 10
    assert {s: len(r) for s, r in ds.splits.items()} == {"train": 5000, "val": 2000, "test": 3000}
    image = ds.splits["val"][0].open()
    assert image.size == (28, 28) and image.mode == "RGB"


@pytest.mark.slow  # 70k records: about 1.5 s
@pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} missing: apt-get install dataset-fashion-mnist"
)
def test_fashion_mnist_from_debian() -> None:
    ds = load_dataset("fashion-mnist")
    assert ds.classnames[-1] == "ankle boot"
    assert {s: len(r) for s, r in ds.splits.items()} == {
        "train": 48000,
        "val": 12000,
        "test": 10000,
    }
    assert ds.splits["test"][0].open().size == (28, 28)
