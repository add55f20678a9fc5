"""Bring-your-own-features folders: round trip, the checks, the store path, few-shot selection."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from aape import byof
from aape import simulation as sim
from aape.cli.main import main
from aape.data import Task
from prompt_banks.errors import UserError
from prompt_banks.schema import text_hash


@pytest.fixture(scope="module")
def task() -> Task:
    return sim.simulate(
        sim.small_config(
            d=16,
            n_classes=4,
            n_families=2,
            n_attributes=12,
            family_pool=4,
            attrs_per_class=4,
            prompts_per_class=(3, 5),
            train_per_class=4,
            test_per_class=2,
        )
    ).task


@pytest.fixture
def folder(task: Task, tmp_path: Path) -> Path:
    return byof.write_task(task, tmp_path / "feats")


def _rewrite(path: Path, **columns: object) -> None:
    table = pq.read_table(path)
    for name, values in columns.items():
        arr = values if isinstance(values, pa.Array) else pa.array(values)
        table = table.set_column(table.column_names.index(name), name, arr)
    pq.write_table(table, path)


def _emb(rows: list[list[float]]) -> pa.Array:
    return pa.array(rows, type=pa.list_(pa.float32()))


def test_round_trip_is_exact(task: Task, folder: Path) -> None:
    back = byof.load_task(folder)
    assert back.texts.names == task.texts.names and back.model_id == task.model_id
    assert torch.allclose(back.texts.templates, task.texts.templates, atol=1e-6)
    assert torch.equal(back.texts.bank_mask, task.texts.bank_mask)  # type: ignore[arg-type]
    assert torch.allclose(back.texts.bank, task.texts.bank, atol=1e-6)  # type: ignore[arg-type]
    for split in ("train", "val", "test"):
        a, b = getattr(task, split), getattr(back, split)
        assert torch.allclose(a.x, b.x, atol=1e-6)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.view, b.view)
        assert torch.equal(a.image_index, b.image_index) and a.image_ids == b.image_ids
    assert json.loads((folder / "meta.json").read_text())["d"] == task.texts.dim
    assert not list(folder.glob(".*tmp"))


def test_unnormalised_vectors_are_renormalised_with_a_warning(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = pq.read_table(folder / "classes.parquet")
    scaled = [[3 * v for v in row] for row in table.column("embedding").to_pylist()]
    _rewrite(folder / "classes.parquet", embedding=_emb(scaled))
    with caplog.at_level(logging.WARNING, logger="aape.byof"):
        back = byof.load_task(folder)
    assert torch.allclose(back.texts.templates.norm(dim=1), torch.ones(len(scaled)), atol=1e-6)
    assert "not unit length" in caplog.text


def test_wrong_dimension_names_file_and_field(folder: Path) -> None:
    table = pq.read_table(folder / "image_features.parquet")
    rows = table.column("embedding").to_pylist()
    rows[2] = rows[2][:-1]
    _rewrite(folder / "image_features.parquet", embedding=_emb(rows))
    with pytest.raises(
        UserError, match=r"image_features\.parquet: field embedding has 15 floats in row 2"
    ):
        byof.load_task(folder)


def test_image_label_without_class_embedding(folder: Path) -> None:
    labels = pq.read_table(folder / "image_features.parquet").column("label").to_pylist()
    labels[0] = 9
    _rewrite(folder / "image_features.parquet", label=labels)
    with pytest.raises(
        UserError, match=r"image_features\.parquet: field label 9 has no row in classes\.parquet"
    ):
        byof.load_task(folder)


def test_class_without_prompts_is_named(task: Task, folder: Path) -> None:
    table = pq.read_table(folder / "prompts.parquet")
    pq.write_table(
        table.filter(pa.compute.not_equal(table.column("label"), 1)), folder / "prompts.parquet"
    )
    with pytest.raises(
        UserError, match=rf"prompts\.parquet: 1 classes have no prompts \('{task.texts.names[1]}'\)"
    ):
        byof.load_task(folder)


def test_class_labels_must_be_contiguous(folder: Path) -> None:
    _rewrite(folder / "classes.parquet", label=[0, 1, 2, 7])
    with pytest.raises(UserError, match=r"classes\.parquet: field label must hold 0\.\.3"):
        byof.load_task(folder)


def test_zero_vector_is_refused(folder: Path, task: Task) -> None:
    rows = pq.read_table(folder / "prompts.parquet").column("embedding").to_pylist()
    rows[0] = [0.0] * task.texts.dim
    _rewrite(folder / "prompts.parquet", embedding=_emb(rows))
    with pytest.raises(UserError, match=r"prompts\.parquet: field embedding row 0 is zero"):
        byof.load_task(folder)


@pytest.mark.parametrize(
    "name", ["meta.json", "image_features.parquet", "classes.parquet", "prompts.parquet"]
)
def test_missing_file_is_named(folder: Path, name: str) -> None:
    (folder / name).unlink()
    with pytest.raises(UserError, match=rf"{name.replace('.', '[.]')}: missing"):
        byof.load_task(folder)


def test_missing_column_bad_split_and_bad_meta(folder: Path) -> None:
    splits = pq.read_table(folder / "image_features.parquet").column("split").to_pylist()
    _rewrite(folder / "image_features.parquet", split=["dev" if s == "val" else s for s in splits])
    with pytest.raises(UserError, match=r"field split has \['dev'\]"):
        byof.load_task(folder)
    pq.write_table(
        pq.read_table(folder / "classes.parquet").drop_columns(["name"]), folder / "classes.parquet"
    )
    with pytest.raises(UserError, match=r"classes\.parquet: column 'name' is missing"):
        byof.load_task(folder)
    (folder / "meta.json").write_text(json.dumps({"model_id": "m", "d": "512"}))
    with pytest.raises(UserError, match=r"meta\.json: field d must be a positive integer"):
        byof.load_task(folder)


def test_prompt_text_column_is_optional(folder: Path, task: Task) -> None:
    pq.write_table(
        pq.read_table(folder / "prompts.parquet").drop_columns(["text"]), folder / "prompts.parquet"
    )
    assert torch.equal(byof.load_task(folder).texts.bank_mask, task.texts.bank_mask)  # type: ignore[arg-type]


def test_bank_from_a_store_domain(task: Task, folder: Path, tmp_path: Path) -> None:
    from prompt_banks.importers import import_file
    from prompt_banks.store import BankStore

    store = BankStore(tmp_path / "banks")
    texts = {
        name: [f"A {name} number {i} looks distinctive." for i in range(2 + c)]
        for c, name in enumerate(task.texts.names)
    }
    (tmp_path / "cupl.json").write_text(json.dumps(texts))
    import_file(store, tmp_path / "cupl.json", domain="simdom", fmt="cupl")
    gen = torch.Generator().manual_seed(0)
    rows = [
        {
            "text_hash": text_hash(t),
            "model_id": task.model_id,
            "dim": task.texts.dim,
            "embedding": torch.nn.functional.normalize(
                torch.randn(task.texts.dim, generator=gen), dim=0
            ).tolist(),
            "n_tokens": 9,
            "truncated": False,
        }
        for ts in texts.values()
        for t in ts
    ]
    store.append_embeddings(rows)
    (folder / "prompts.parquet").unlink()
    back = byof.load_task(folder, bank_store=store.root, bank_domain="simdom")
    assert back.texts.bank_mask.sum(1).tolist() == [2, 3, 4, 5]  # type: ignore[union-attr]
    with pytest.raises(UserError, match="no embeddings for 'other/model'"):
        (folder / "meta.json").write_text(
            json.dumps({"model_id": "other/model", "d": task.texts.dim})
        )
        byof.load_task(folder, bank_store=store.root, bank_domain="simdom")


def test_select_shots_is_seeded_nested_and_keeps_views(task: Task, folder: Path) -> None:
    one = byof.load_task(folder, shots=1, seed=2)
    two = byof.load_task(folder, shots=2, seed=2)
    again = byof.select_shots(task, 2, 2)
    assert one.train.n_images == 4 and two.train.n_images == 8
    assert set(one.train.image_ids) <= set(two.train.image_ids)
    assert two.train.image_ids == again.train.image_ids
    assert len(two.train.x) == 2 * two.train.n_images  # both views of each image
    assert byof.select_shots(task, 2, 3).train.image_ids != two.train.image_ids


def test_more_shots_than_the_features_hold_is_refused_unless_told(folder: Path) -> None:
    with pytest.raises(UserError, match=r"5 training images per class asked, but 4 classes"):
        byof.load_task(folder, shots=5)
    every = byof.load_task(folder, shots=5, shots_policy="all-available")
    assert every.train.n_images == 16
    assert every.provenance == {
        "shots_policy": "all-available",
        "short_classes": {"0": 4, "1": 4, "2": 4, "3": 4},
    }


def test_cli_simulate_writes_a_loadable_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "simulate",
                "--out",
                str(tmp_path / "s"),
                "--small",
                "--world",
                "control",
                "--seed",
                "4",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    t = byof.load_task(tmp_path / "s")
    assert (
        t.name == "sim-control"
        and json.loads((tmp_path / "s" / "simulation.json").read_text())["seed"] == 4
    )


def test_cli_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["simulate", "--out", str(tmp_path / "a-file" / "sub"), "--small"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
