"""The image-feature cache with the real (tiny, random) open_clip image tower."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from fake_images import image_folder
from PIL import Image

from aape.datasets import load_dataset
from aape.features import (
    augmented_view,
    compute_feature_rows,
    encode_images,
    extract_features,
    load_features,
    split_dir,
    views_for,
)


@pytest.fixture
def dataset(tmp_path: Path):
    return load_dataset(
        "folder", image_folder(tmp_path / "data", ["cat", "dog", "eel"], {"train": 2, "test": 2})
    )


def test_extract_is_incremental_and_keyed_by_view(dataset, tiny_clip, home: Path) -> None:
    first = extract_features(dataset, tiny_clip, home, n_views=2, progress=False)
    assert (first.computed, first.cached, first.skipped_images) == (6 * 3 + 6, 0, 0)
    assert first.images == 12 and first.seconds > 0
    second = extract_features(dataset, tiny_clip, home, n_views=2, progress=False)
    assert (second.computed, second.cached, second.images) == (0, 24, 0)
    more = extract_features(dataset, tiny_clip, home, n_views=3, splits=["train"], progress=False)
    assert (more.computed, more.cached) == (6, 18)  # only the new view of each train image

    train = load_features(home, tiny_clip.model_id, dataset.name, "train")
    assert train.x.shape == (24, 64) and train.n_images == 6
    assert torch.allclose(train.x.norm(dim=-1), torch.ones(24), atol=1e-5)
    assert train.view.tolist()[:4] == [0, 1, 2, 3] and train.image_index.tolist()[:4] == [0] * 4
    assert train.labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    capped = load_features(
        home, tiny_clip.model_id, dataset.name, "train", max_view=1, image_ids=train.image_ids[:2]
    )
    assert capped.view.tolist() == [0, 1, 0, 1] and capped.image_ids == train.image_ids[:2]
    test = load_features(home, tiny_clip.model_id, dataset.name, "test")
    assert test.x.shape == (6, 64) and set(test.view.tolist()) == {0}


def test_views_differ_and_the_centre_view_is_deterministic(dataset, tiny_clip, home: Path) -> None:
    extract_features(dataset, tiny_clip, home, n_views=2, splits=["train"], progress=False)
    fs = load_features(home, tiny_clip.model_id, dataset.name, "train")
    per_image = fs.x[fs.image_index == 0]
    assert not torch.allclose(per_image[1], per_image[2])
    assert not torch.allclose(per_image[0], per_image[1])
    record = next(r for r in dataset.splits["train"] if r.image_id == fs.image_ids[0])
    again = encode_images(tiny_clip, [record.open()])
    assert torch.allclose(again[0], per_image[0], atol=1e-5)  # view 0 = preprocess_val centre crop
    image = record.open()
    a = np.asarray(augmented_view(image, record.image_id, 1, 64))
    assert np.array_equal(a, np.asarray(augmented_view(image, record.image_id, 1, 64)))
    assert not np.array_equal(a, np.asarray(augmented_view(image, record.image_id, 2, 64)))
    assert a.shape == (64, 64, 3)


def test_files_are_published_atomically_and_readable_by_duckdb(
    dataset, tiny_clip, home: Path
) -> None:
    extract_features(dataset, tiny_clip, home, n_views=1, progress=False)
    folder = split_dir(home, tiny_clip.model_id, dataset.name, "train")
    names = [p.name for p in folder.iterdir()]
    assert names and all(n.startswith("part-") and n.endswith(".parquet") for n in names)
    row = (
        duckdb.connect()
        .execute(
            "SELECT id, view, model_id, embedding::FLOAT[64] AS x "
            f"FROM read_parquet('{folder}/*.parquet') "
            "ORDER BY id, view LIMIT 1"
        )
        .fetchone()
    )
    assert row[1] == 0 and row[2] == tiny_clip.model_id and len(row[3]) == 64


def test_compute_feature_rows_is_a_pure_shard_function(dataset, tiny_clip, home: Path) -> None:
    jobs = [(r, views_for(r.split, 2)) for r in dataset.splits["train"][:2]]
    shard = compute_feature_rows(
        jobs, tiny_clip, dataset=dataset.name, batch_size=4, progress=False
    )
    assert shard.table.num_rows == 6 and shard.unreadable == [] and shard.images == 2
    assert shard.table.column("view").to_pylist() == [0, 1, 2, 0, 1, 2]
    assert not home.exists()  # nothing stored


def test_encode_images_batches_and_normalises(tiny_clip) -> None:
    images = [Image.new("RGB", (30 + i, 20), (i * 40, 10, 200)) for i in range(5)]
    x = encode_images(tiny_clip, images, batch_size=2)
    assert x.shape == (5, tiny_clip.dim) and x.dtype == torch.float32
    assert torch.allclose(x.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(encode_images(tiny_clip, images[:1]), x[:1], atol=1e-5)
    assert views_for("test", 5) == [0] and views_for("train", 2) == [0, 1, 2]


def test_cli_features(dataset, tmp_path: Path, home: Path, capsys) -> None:
    from aape.cli.main import main

    root = tmp_path / "data"
    argv = ["features", "--dataset", "folder", "--data-root", str(root), "--views", "1"]
    assert main([*argv, "--home", str(home), "--splits", "test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["computed"] == 6 and out["skipped_images"] == 0 and out["dataset"] == dataset.name
    assert main([*argv, "--home", str(home), "--splits", "holdout"]) == 2
    assert "--splits: holdout unknown" in capsys.readouterr().err


def test_selecting_no_cached_image_gives_an_empty_set(dataset, tiny_clip, home: Path) -> None:
    extract_features(dataset, tiny_clip, home, n_views=0, splits=["test"], progress=False)
    empty = load_features(home, tiny_clip.model_id, dataset.name, "test", image_ids=["nope.png"])
    assert empty.x.shape == (0, 64) and empty.n_images == 0
