"""The feature cache and the bank on the store path (`--dataset` + `--bank-domain`): a damaged
part or a size that is not the CLIP's is one line before any training, not a torch traceback."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from damage import DAMAGES, REASONS, corrupt_row_group
from fake_images import image_folder
from test_cli_bank import run
from test_doctor import FIX, one_line_error
from test_store import emb_row, files_of

from aape.datasets import load_dataset
from aape.doctor import run_doctor
from aape.features import extract_features, load_features, split_dir
from prompt_banks.embed import domain_texts
from prompt_banks.errors import UserError
from prompt_banks.importers import import_file
from prompt_banks.paths import banks_dir
from prompt_banks.store import BankStore

CLASSES = ["cat", "dog"]


@pytest.fixture
def cached(tmp_path: Path, home: Path, capsys) -> tuple[Path, Path]:
    """(data root, home) with every feature of a two-class folder dataset cached."""
    data = image_folder(tmp_path / "data", CLASSES, {"train": 2, "test": 2})
    argv = ["features", "--dataset", "folder", "--data-root", data, "--views", "1", "--home", home]
    assert run(capsys, *argv)[0] == 0
    return data, home


def _train(data: Path, home: Path, *more: str) -> list:
    return ["train", "--dataset", "folder", "--data-root", data, "--shots", "1", "--home", home,
            "--quiet", "--set", "epochs=1", "--set", "recipe=adamw", *more]  # fmt: skip


def _parts(home: Path, split: str) -> list[Path]:
    return sorted((home / "features").glob(f"*/*/{split}/part-*.parquet"))


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_feature_part_is_named(cached, capsys, damage: str) -> None:
    data, home = cached
    (part,) = _parts(home, "test")
    DAMAGES[damage](part)
    before = files_of(home)
    for argv in (
        _train(data, home, "--set", "method=linear_probe"),
        ["features", "--dataset", "folder", "--data-root", data, "--views", "1", "--home", home],
    ):
        code, _, err = run(capsys, *argv)
        message = one_line_error(err)
        assert code == 2 and message.startswith(f"features: damaged part {part}: {REASONS[damage]}")
        assert message.endswith(FIX) and files_of(home) == before
    code, out, _ = run(capsys, "doctor", "--home", home)
    assert code == 1 and out.startswith(f"feature cache: {part}: {REASONS[damage]}")


def test_features_of_another_size_than_the_clip_are_refused(cached, capsys) -> None:
    data, home = cached
    (part,) = _parts(home, "test")
    table = pq.read_table(part)
    rng = np.random.default_rng(0)
    small = rng.normal(size=(table.num_rows, 32)).astype(np.float32)
    small /= np.linalg.norm(small, axis=1, keepdims=True)
    table = table.set_column(
        table.schema.get_field_index("embedding"),
        table.schema.field("embedding"),
        pa.array(list(small), type=pa.list_(pa.float32())),
    ).set_column(
        table.schema.get_field_index("dim"),
        table.schema.field("dim"),
        pa.array([32] * table.num_rows, pa.int32()),
    )
    pq.write_table(table, part)  # sound and consistent, but 32-d where the CLIP is 64-d
    code, _, err = run(capsys, *_train(data, home, "--set", "method=linear_probe"))
    assert code == 2 and one_line_error(err).startswith(
        f"features: {part.parent} holds d = 32, the CLIP "
    )


def test_a_bank_of_another_size_than_the_clip_is_refused(cached, capsys, tmp_path, tiny_clip):
    data, home = cached
    bank = tmp_path / "bank.json"
    bank.write_text(json.dumps({"cat": ["A small pet."], "dog": ["A loyal pet."]}))
    store = BankStore(banks_dir(home))
    import_file(store, bank, domain="toy")
    texts = domain_texts(store, "toy")
    store.append_embeddings([emb_row(t, model_id=tiny_clip.model_id, dim=32) for t in texts])
    before = files_of(home)
    code, _, err = run(capsys, *_train(data, home, "--bank-domain", "toy"))
    assert code == 2 and one_line_error(err) == (
        f"bank domain toy: the store {home / 'banks'} holds {tiny_clip.model_id} embeddings of "
        "d = 32, the CLIP has d = 64; embed the domain again (`aape bank embed`) under a fresh "
        "--home"
    )
    assert files_of(home) == before


def test_a_damaged_feature_part_on_a_url_home(tmp_path: Path, tiny_clip) -> None:
    home = f"memory://aape-test-{uuid.uuid4().hex}/home"
    dataset = load_dataset("folder", image_folder(tmp_path / "data", CLASSES, {"test": 2}))
    extract_features(dataset, tiny_clip, home, n_views=0, progress=False)
    folder = split_dir(home, tiny_clip.model_id, dataset.name, "test")
    fs, path = fsspec.core.url_to_fs(folder)
    (part,) = fs.glob(f"{path}/part-*.parquet")
    with fs.open(part, "wb") as f:
        f.write(b"")
    with pytest.raises(UserError) as err:
        load_features(home, tiny_clip.model_id, dataset.name, "test")
    assert str(err.value).startswith(
        f"features: damaged part {fs.unstrip_protocol(part)}: empty file (0 bytes); "
    )
    report = run_doctor(home, quarantine=True)
    assert [f.kind for f in report.findings] == ["feature cache"] and not report.remaining
    (moved,) = fs.glob(f"{home}/quarantine/*/features/*/*/test/part-*.parquet")
    assert moved.endswith(part.rsplit("/", 1)[1]) and not fs.exists(part)
    with pytest.raises(UserError, match="none cached"):
        load_features(home, tiny_clip.model_id, dataset.name, "test")


def test_a_feature_part_whose_pages_are_damaged_is_named(cached, capsys) -> None:
    data, home = cached
    (part,) = _parts(home, "test")
    corrupt_row_group(part, 0)  # the footer stays sound: only the read can tell
    before = files_of(home)
    code, _, err = run(capsys, *_train(data, home, "--set", "method=linear_probe"))
    assert code == 2 and one_line_error(err).startswith(
        f"feature cache: damaged part {part}: row group 0 unreadable"
    )
    assert files_of(home) == before
