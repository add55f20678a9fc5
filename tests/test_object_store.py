"""An fsspec URL home (`memory://`, standing in for s3/gs): the bank store, the feature cache
and few-shot manifests live there; runs and artifacts refuse it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
import torch
from fake_images import image_folder

from aape.datasets import load_dataset
from aape.features import extract_features, load_features, split_dir
from aape.tasks import prepare_task
from prompt_banks.embed import embed_domain
from prompt_banks.errors import UserError
from prompt_banks.importers import import_file
from prompt_banks.paths import artifacts_dir, banks_dir, features_dir, runs_dir
from prompt_banks.store import BankStore


@pytest.fixture
def url_home() -> Iterator[str]:
    root = f"memory://aape-test-{uuid.uuid4().hex}/home"
    yield root
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@pytest.fixture
def dataset(tmp_path: Path):
    return load_dataset(
        "folder", image_folder(tmp_path / "data", ["cat", "dog", "eel"], {"train": 2, "test": 2})
    )


def test_a_url_home_keeps_its_scheme_and_runs_stay_local(tmp_path: Path) -> None:
    assert banks_dir("s3://bucket/aape/") == "s3://bucket/aape/banks"
    assert features_dir("gs://b/x") == "gs://b/x/features"
    assert banks_dir(tmp_path) == tmp_path / "banks"
    assert runs_dir(tmp_path) == tmp_path / "runs"
    assert features_dir(f"file://{tmp_path}") == tmp_path / "features"
    for where in (runs_dir, artifacts_dir):
        with pytest.raises(UserError, match="local --home"):
            where("s3://bucket/aape")


def test_feature_cache_on_a_url_equals_a_local_one(dataset, tiny_clip, home, url_home) -> None:
    local = extract_features(dataset, tiny_clip, home, n_views=2, progress=False)
    remote = extract_features(dataset, tiny_clip, url_home, n_views=2, progress=False)
    assert remote.computed == local.computed == 6 * 3 + 6
    again = extract_features(dataset, tiny_clip, url_home, n_views=2, progress=False)
    assert (again.computed, again.cached, again.images) == (0, 24, 0)

    folder = split_dir(url_home, tiny_clip.model_id, dataset.name, "train")
    assert isinstance(folder, str) and folder.startswith("memory://")
    fs, path = fsspec.core.url_to_fs(folder)
    assert [p.rsplit("/", 1)[1].startswith("part-") for p in fs.ls(path, detail=False)] == [True]
    for split in ("train", "test"):
        a = load_features(home, tiny_clip.model_id, dataset.name, split)
        b = load_features(url_home, tiny_clip.model_id, dataset.name, split)
        assert a.image_ids == b.image_ids and torch.equal(a.view, b.view)
        assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)
    first_id = load_features(home, tiny_clip.model_id, dataset.name, "train").image_ids[0]
    picked = load_features(
        url_home, tiny_clip.model_id, dataset.name, "train", image_ids=[first_id], max_view=0
    )
    assert picked.image_ids == [first_id] and picked.x.shape == (1, 64)


def test_missing_features_under_a_url_name_the_url(tiny_clip, url_home) -> None:
    with pytest.raises(UserError, match="memory://"):
        load_features(url_home, tiny_clip.model_id, "nothing", "train")


def test_a_task_from_a_bank_store_on_a_url(tmp_path: Path, tiny_clip, url_home) -> None:
    data = image_folder(tmp_path / "data", ["cat", "dog"], {"train": 2, "test": 1})
    bank_file = tmp_path / "bank.json"
    bank_file.write_text(json.dumps({"cat": ["A furry pet."], "dog": ["It barks.", "Loyal."]}))
    store = BankStore(banks_dir(url_home))
    import_file(store, bank_file, domain="toy")
    first = embed_domain(store, "toy", tiny_clip, progress=False)
    assert first.encoded == first.texts == 3 + 2  # + one template text per class
    assert embed_domain(store, "toy", tiny_clip, progress=False).encoded == 0
    prepared = prepare_task(
        dataset="folder", data_root=str(data), home=url_home, clip=tiny_clip, bank_domain="toy",
        shots=1, seed=0, n_views=1, progress=False,
    )  # fmt: skip
    task = prepared.task
    assert task.texts.bank is not None and task.train.x.shape == (2 * 2, 64)
    assert str(prepared.manifest_path).startswith(url_home)
    with fsspec.open(prepared.manifest_path, "r") as f:
        assert json.load(f)["shots"] == 1
