"""The part checks: the cheap footer check on every read, and the deep check doctor runs."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from damage import DAMAGES, REASONS, corrupt_row_group, write_row_groups
from test_store import desc_row, emb_row

from prompt_banks import schema
from prompt_banks.atomic import part_name
from prompt_banks.errors import UserError
from prompt_banks.integrity import check_parts, deep_check, footer_problem
from prompt_banks.queries import list_domains, stats
from prompt_banks.store import BankStore, utc_now


def _store(tmp_path: Path) -> BankStore:
    store = BankStore(tmp_path / "banks")
    store.append_descriptions([desc_row(f"text {i}", index=i) for i in range(3)])
    store.append_embeddings([emb_row(f"text {i}", seed=i) for i in range(3)])
    return store


def _lying_embeddings(rows: list[tuple[int, int]]) -> pa.Table:
    """Embedding rows whose `dim` says one size and whose vector has (dim, floats)."""
    return pa.Table.from_pylist(
        [
            {**emb_row(f"lie {i}", dim=floats, seed=i), "dim": dim, "created_at": utc_now()}
            for i, (dim, floats) in enumerate(rows)
        ],
        schema=schema.EMBEDDINGS,
    )


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_each_damage_is_named_by_the_footer_check(tmp_path: Path, damage: str) -> None:
    store = _store(tmp_path)
    (part,) = sorted(Path(store.descriptions_dir).glob("*.parquet"))
    assert footer_problem(str(part), schema.DESCRIPTIONS) is None
    DAMAGES[damage](part)
    assert footer_problem(str(part), schema.DESCRIPTIONS).startswith(REASONS[damage])
    with pytest.raises(UserError) as err:
        list_domains(store)
    message = str(err.value)
    assert message.startswith(f"store: damaged part {part}: {REASONS[damage]}")
    assert message.endswith("run `aape doctor --quarantine` on this home to move it aside "
                            "(its readable rows are kept)")  # fmt: skip


def test_a_verdict_is_kept_per_name_and_size(tmp_path: Path) -> None:
    store = _store(tmp_path)
    parts = sorted(str(p) for p in Path(store.embeddings_dir).glob("*.parquet"))
    assert check_parts(parts, schema.EMBEDDINGS, what="store") == parts
    DAMAGES["truncated"](Path(parts[0]))  # another size: checked again, and refused
    with pytest.raises(UserError, match="damaged part"):
        check_parts(parts, schema.EMBEDDINGS, what="store")


def test_a_dim_that_lies_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    store = _store(tmp_path)
    part = Path(store.embeddings_dir) / part_name()
    pq.write_table(_lying_embeddings([(8, 4), (8, 4)]), part)
    problem = footer_problem(str(part), schema.EMBEDDINGS)
    assert (
        problem == "metadata lies: column 'dim' says 8 but row group 0 holds 8 floats for 2 vectors"
    )
    with pytest.raises(UserError, match=f"damaged part {part}: metadata lies"):
        stats(store, "pets")


def test_deep_check_keeps_the_readable_row_groups(tmp_path: Path) -> None:
    rows = [{**desc_row(f"t{i}", index=i), "created_at": utc_now()} for i in range(6)]
    part = tmp_path / part_name()
    write_row_groups(pa.Table.from_pylist(rows, schema=schema.DESCRIPTIONS), part, 2)
    assert deep_check(str(part), schema.DESCRIPTIONS).problem is None
    corrupt_row_group(part, 1)
    assert footer_problem(str(part), schema.DESCRIPTIONS) is None  # the footer cannot tell
    report = deep_check(str(part), schema.DESCRIPTIONS)
    assert report.problem.startswith("row group 1 unreadable") and report.rows == 6
    assert report.good.column("row_key").to_pylist() == [rows[i]["row_key"] for i in (0, 1, 4, 5)]


def test_deep_check_drops_only_the_rows_that_lie(tmp_path: Path) -> None:
    part = tmp_path / part_name()
    table = _lying_embeddings([(4, 4), (4, 8), (4, 4)])
    pq.write_table(table, part)
    assert footer_problem(str(part), schema.EMBEDDINGS).startswith("metadata lies")
    report = deep_check(str(part), schema.EMBEDDINGS)
    assert report.problem == "1 vectors whose length is not their 'dim'"
    assert report.good.num_rows == 2 and set(report.good.column("dim").to_pylist()) == {4}
    assert [len(v) for v in report.good.column("embedding").to_pylist()] == [4, 4]


def test_deep_check_drops_rows_with_an_empty_required_column(tmp_path: Path) -> None:
    rows = [{**desc_row(f"t{i}", index=i), "created_at": utc_now()} for i in range(3)]
    relaxed = pa.schema([f.with_nullable(True) for f in schema.DESCRIPTIONS])
    table = pa.Table.from_pylist(rows, schema=relaxed)
    status = pa.array(["ok", None, "ok"], pa.string())
    part = tmp_path / part_name()
    pq.write_table(table.set_column(table.schema.get_field_index("status"), "status", status), part)
    report = deep_check(str(part), schema.DESCRIPTIONS)
    assert report.problem == "1 rows with an empty 'status'"
    assert report.good.column("row_key").to_pylist() == [rows[0]["row_key"], rows[2]["row_key"]]
