"""Caption datasets in the public formats, the caption bank in the store, and their features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from vl_fixtures import caption_csv, caption_jsonl, coco_captions, karpathy_coco, karpathy_flickr

from aape.datasets.offline import ANIMAL_CLASSES
from aape.vl.bank import caption_bank, caption_store, embed_captions
from aape.vl.data import clean_caption, read_captions
from aape.vl.synthetic import SUFFIX, synthetic_captions
from aape.vl.tasks import extract_caption_features, load_caption_split
from prompt_banks.errors import UserError
from prompt_banks.schema import text_hash


def test_karpathy_coco_maps_restval_to_train_and_keeps_ids(tmp_path: Path) -> None:
    path = karpathy_coco(tmp_path, {"train": 2, "restval": 2, "val": 1, "test": 1})
    ds = read_captions("karpathy", path, images=str(tmp_path))
    assert ds.name == "coco" and ds.source == "karpathy"
    assert [im.split for im in ds.images] == ["train"] * 4 + ["val", "test"]
    assert [im.source_split for im in ds.images][2:4] == ["restval", "restval"]
    first = ds.images[0]
    assert first.image_id == "train2014/COCO_train2014_000000391895.jpg"
    assert first.source_image_id == "391895"
    assert first.source_caption_ids == [770337 + j for j in range(5)]
    assert Path(first.path) == (tmp_path / first.image_id).resolve()
    assert ds.images[2].image_id.startswith("val2014/")  # restval images live in val2014
    assert first.captions[0].endswith(". ")  # raw kept as given
    assert clean_caption(first.captions[0]) == "A dog next to a dog in picture 0 number 0."


def test_karpathy_flickr_has_no_filepath(tmp_path: Path) -> None:
    path = karpathy_flickr(tmp_path, {"train": 2, "test": 1})
    ds = read_captions("karpathy", path, images=str(tmp_path / "flickr30k-images"))
    assert ds.name == "flickr30k"
    assert [im.image_id for im in ds.images] == [
        "1000092795.jpg",
        "1000092796.jpg",
        "1000092797.jpg",
    ]
    assert all(im.source_image_id is None and len(im.captions) == 5 for im in ds.images)


def test_coco_official_groups_annotations_by_image_in_id_order(tmp_path: Path) -> None:
    path = coco_captions(tmp_path, 3)
    ds = read_captions("coco", path, images=str(tmp_path / "val2014"))
    assert ds.name == "coco-val2014"
    assert {im.split for im in ds.images} == {"test"}  # val images are COCO's retrieval test
    first = ds.images[0]
    assert first.image_id == "COCO_val2014_000000179765.jpg" and first.source_image_id == "179765"
    assert first.source_caption_ids == sorted(first.source_caption_ids)
    assert first.captions[1].endswith("\n") and clean_caption(first.captions[1]).endswith(".")


def test_csv_and_jsonl_rows(tmp_path: Path) -> None:
    ds = read_captions("csv", caption_csv(tmp_path / "a", 3))
    assert [(im.image_id, im.split, len(im.captions)) for im in ds.images] == [
        ("img/0.png", "train", 3),
        ("img/1.png", "train", 3),
        ("img/2.png", "test", 3),
    ]
    no_split = read_captions("csv", caption_csv(tmp_path / "b", 6, split=False))
    again = read_captions("csv", tmp_path / "b" / "captions.csv")
    assert [im.split for im in no_split.images] == [im.split for im in again.images]  # seeded
    assert {im.split for im in no_split.images} <= {"train", "val", "test"}
    jl = read_captions("jsonl", caption_jsonl(tmp_path / "c", 2), name="mine")
    assert jl.name == "mine" and [len(im.captions) for im in jl.images] == [3, 3]


def test_empty_captions_are_dropped_and_counted(tmp_path: Path) -> None:
    path = caption_csv(tmp_path, 2)
    path.write_text(path.read_text() + 'img/0.png,"   ",train\n')
    ds = read_captions("csv", path)
    assert ds.dropped_empty == 1 and len(ds.images[0].captions) == 3


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("no_file", "missing"),
        ("bad_split", "has split 'dev'; expected one of train, val, test, restval"),
        ("not_karpathy", r"is not a Karpathy split file \(no 'images' list\)"),
        ("bad_json", "cannot read"),
    ],
)
def test_karpathy_errors_are_one_line(tmp_path: Path, setup: str, message: str) -> None:
    path = karpathy_flickr(tmp_path, {"train": 3})
    images = tmp_path / "flickr30k-images"
    content = json.loads(path.read_text())
    if setup == "no_file":
        path.unlink()
    elif setup == "bad_split":
        content["images"][1]["split"] = "dev"
        path.write_text(json.dumps(content))
    elif setup == "not_karpathy":
        path.write_text(json.dumps([content]))
    else:
        path.write_text("{")
    with pytest.raises(UserError, match=message) as err:
        read_captions("karpathy", path, images=str(images))
    assert "\n" not in str(err.value)


def test_table_errors(tmp_path: Path) -> None:
    bad = tmp_path / "x.csv"
    bad.write_text("path,text\na.png,hello\n")
    with pytest.raises(UserError, match=r"header is \['path', 'text'\]"):
        read_captions("csv", bad)
    with pytest.raises(UserError, match="needs the folder its images are in"):
        read_captions("karpathy", bad)
    with pytest.raises(UserError, match="--format: 'tsv'"):
        read_captions("tsv", bad)
    with pytest.raises(UserError, match="--name: 'a b'"):
        read_captions("csv", caption_csv(tmp_path, 1), name="a b")


def test_store_is_incremental_and_embeds_each_text_once(tmp_path: Path, tiny_clip) -> None:
    store = caption_store(tmp_path / "home")
    path = karpathy_flickr(tmp_path, {"train": 3, "test": 2})
    ds = read_captions("karpathy", path, images=str(tmp_path / "flickr30k-images"))
    first = store.import_captions(ds)
    assert (first.written, first.unchanged, first.splits) == (25, 0, {"train": 3, "test": 2})
    files = len(list(Path(store.captions_dir).glob("*.parquet")))
    assert store.import_captions(ds).written == 0
    assert len(list(Path(store.captions_dir).glob("*.parquet"))) == files  # no-op writes nothing

    ds.images[0].captions[1] = "A changed caption."
    assert store.import_captions(ds).written == 1
    with store.connect() as con:
        text = con.execute(
            "SELECT text FROM captions WHERE dataset = 'flickr30k' AND caption_index = 1 "
            "AND image_id = '1000092795.jpg'"
        ).fetchall()
    assert text == [("A changed caption.",)]  # the newest row of a key wins

    report = embed_captions(store, "flickr30k", tiny_clip, progress=False)
    assert report.encoded == 25 and embed_captions(store, "flickr30k", tiny_clip).encoded == 0
    # A second dataset sharing every text but one embeds only that one.
    ds.name = "flickr-copy"
    ds.images[0].captions[0] = "Only here."
    store.import_captions(ds)
    assert embed_captions(store, "flickr-copy", tiny_clip, progress=False).encoded == 1

    bank = caption_bank(store, "flickr30k", tiny_clip.model_id, splits=["train"])
    assert bank.image_ids == ["1000092795.jpg", "1000092796.jpg", "1000092797.jpg"]
    assert bank.caption_image.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert bank.texts[1] == "A changed caption."
    with store.connect() as con:
        (stored,) = con.execute(
            "SELECT embedding FROM embeddings WHERE text_hash = ?", [text_hash(bank.texts[1])]
        ).fetchone()
    assert torch.allclose(bank.embeddings[1], torch.tensor(stored))
    padded, mask = bank.padded()
    assert padded.shape == (3, 5, tiny_clip.dim) and bool(mask.all())
    assert torch.equal(padded[1, 2], bank.embeddings[7])


def test_bank_errors(tmp_path: Path, tiny_clip) -> None:
    store = caption_store(tmp_path / "home")
    with pytest.raises(UserError, match="run `aape vl import-captions` first"):
        caption_bank(store, "nope", tiny_clip.model_id, splits=["train"])
    ds = read_captions("csv", caption_csv(tmp_path, 3))
    store.import_captions(ds)
    with pytest.raises(UserError, match="run `aape vl embed --dataset"):
        caption_bank(store, ds.name, tiny_clip.model_id, splits=["train"])


def test_split_pairs_features_with_captions(tmp_path: Path, tiny_clip) -> None:
    home = tmp_path / "home"
    store = caption_store(home)
    ds = read_captions("csv", caption_csv(tmp_path, 6))
    (tmp_path / "img" / "1.png").write_bytes(b"not an image")  # unreadable
    (tmp_path / "img" / "4.png").unlink()  # missing
    store.import_captions(ds)
    embed_captions(store, ds.name, tiny_clip, progress=False)
    with pytest.raises(UserError, match=r"images: 1 of 6 image files of .* --max-missing 1 "):
        extract_caption_features(store, ds.name, tiny_clip, home, n_views=2, progress=False)
    _, use = extract_caption_features(
        store, ds.name, tiny_clip, home, n_views=2, max_missing=2, progress=False
    )
    assert sorted(use.unusable.values()) == [str(tmp_path / "img" / f"{i}.png") for i in (1, 4)]
    train = load_caption_split(store, home, ds.name, tiny_clip.model_id, "train")
    assert train.features.image_ids == train.captions.image_ids == ["img/0.png", "img/3.png"]
    assert train.features.x.shape[0] == 2 * 3  # centre crop + 2 views
    assert train.captions.caption_image.tolist() == [0, 0, 0, 1, 1, 1]


def test_synthetic_captions_from_an_offline_dataset(tmp_path: Path) -> None:
    ds = synthetic_captions("animal-mnist", tmp_path / "png", max_per_split=20)
    assert ds.name == "animal-mnist" + SUFFIX and "SYNTHETIC" in ds.description
    assert len(ds.split("train")) == 20 and all(Path(im.path).is_file() for im in ds.images)
    animals = set(ANIMAL_CLASSES)
    for im in ds.images:
        named = {w.strip(".,") for c in im.captions for w in c.split()} & animals
        assert len(named) == 1 and len(im.captions) == 5  # every caption names the label
    again = synthetic_captions("animal-mnist", tmp_path / "png", max_per_split=20)
    assert again.images[0] == ds.images[0]  # seeded


def test_restval_can_be_left_out(tmp_path: Path) -> None:
    path = karpathy_coco(tmp_path, {"train": 2, "restval": 3, "test": 1})
    ds = read_captions("karpathy", path, images=str(tmp_path), restval="drop")
    assert [im.source_split for im in ds.images] == ["train", "train", "test"]
