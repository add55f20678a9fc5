"""load_task: cached features + few-shot manifest + template and bank embeddings -> Task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fake_images import image_folder

from aape.datasets import load_dataset
from aape.fewshot import fewshot_manifest
from aape.tasks import load_task, prepare_task, task_records
from prompt_banks.embed import embed_domain, encode_texts, template_text
from prompt_banks.errors import UserError
from prompt_banks.importers import import_file
from prompt_banks.paths import banks_dir
from prompt_banks.store import BankStore

CLASSES = ["cat", "dog", "sea_eel"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return image_folder(tmp_path / "data", CLASSES, {"train": 3, "val": 1, "test": 2})


def test_few_shot_task_without_a_bank(data: Path, home: Path, tiny_clip) -> None:
    prepared = prepare_task(
        dataset="folder", data_root=str(data), home=home, clip=tiny_clip, bank_domain=None,
        shots=2, seed=1, n_views=2, progress=False,
    )  # fmt: skip
    task = prepared.task
    ds = load_dataset("folder", data)
    manifest = fewshot_manifest(ds.splits["train"], 2, 1, dataset=ds.name)
    assert (
        prepared.manifest == manifest
        and json.loads(prepared.manifest_path.read_text())["shots"] == 2
    )
    assert set(task.train.image_ids) == manifest.selected()
    assert task.train.x.shape == (3 * 2 * 3, 64)  # 3 classes x 2 shots x (centre + 2 views)
    assert task.test.n_images == 6 and task.val is not None and task.val.n_images == 3
    assert task.texts.names == ["cat", "dog", "sea_eel"] and task.texts.bank is None
    expected = encode_texts(tiny_clip, [template_text(c) for c in task.texts.names]).embeddings
    assert torch.allclose(task.texts.templates, expected)
    assert task.model_id == tiny_clip.model_id and task.name == ds.name
    assert prepared.extraction.computed == 18 + 6 + 3
    # the same task again computes nothing; fewer views reuse the cache
    again = prepare_task(
        dataset=ds,
        home=home,
        clip=tiny_clip,
        bank_domain=None,
        shots=2,
        seed=1,
        n_views=1,
        progress=False,
    )
    assert again.extraction.computed == 0 and again.task.train.x.shape == (12, 64)
    assert torch.equal(again.task.test.x, task.test.x)


def test_task_with_a_bank_from_the_store(data: Path, home: Path, tmp_path: Path, tiny_clip) -> None:
    bank_file = tmp_path / "bank.json"
    bank_file.write_text(json.dumps({
        "Cat": ["A small furry pet with whiskers.", "It has pointed ears."],
        "dog": ["A loyal animal that barks."],
        "sea eel": ["A long thin fish.", "It lives in the sea.", "Its body is like a snake."],
    }))  # fmt: skip
    store = BankStore(banks_dir(home))
    import_file(store, bank_file, domain="toy")
    embed_domain(store, "toy", tiny_clip, progress=False)
    task = load_task(
        dataset="folder",
        data_root=str(data),
        home=home,
        clip=tiny_clip,
        bank_domain="toy",
        shots=1,
        seed=0,
        n_views=0,
    )
    assert task.texts.bank is not None and task.texts.bank.shape == (3, 3, 64)
    assert task.texts.bank_mask.sum(1).tolist() == [2, 1, 3]  # matched after canonical names
    assert task.train.x.shape == (3, 64) and set(task.train.view.tolist()) == {0}
    with pytest.raises(UserError, match="no prompts"):
        load_task(
            dataset="folder",
            data_root=str(data),
            home=home,
            clip=tiny_clip,
            bank_domain="other",
            shots=1,
            seed=0,
        )


def test_test_only_dataset_gives_an_evaluation_task(tmp_path: Path, home: Path, tiny_clip) -> None:
    base = tmp_path / "imagenet-rendition"
    (base).mkdir()
    (base / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\n")
    image_folder(base / "imagenet-r", ["n01440764", "n01443537"], {"": 2})
    task = load_task(
        dataset="imagenet-r",
        data_root=str(tmp_path),
        home=home,
        clip=tiny_clip,
        bank_domain=None,
        shots=16,
        seed=1,
    )
    assert task.train.x.shape == (0, 64) and task.test.n_images == 4 and task.val is None
    assert task.texts.names == ["tench", "goldfish"]


def test_task_records_are_the_union_of_the_seeds_picks_and_trimmed_eval(data: Path) -> None:
    ds = load_dataset("folder", data)
    records = task_records(ds, shots=1, seeds=[0, 1], max_eval_images=1)
    picks = set().union(
        *(fewshot_manifest(ds.splits["train"], 1, s, dataset=ds.name).selected() for s in (0, 1))
    )
    train = [r.image_id for r in records if r.split == "train"]
    assert sorted(train) == sorted(picks)
    test = [r for r in records if r.split == "test"]
    assert sorted(r.label for r in test) == list(range(len(CLASSES)))  # 1 of 2 per class kept
    assert len(task_records(ds, shots=None, seeds=[], splits=("train",))) == 3 * len(CLASSES)
