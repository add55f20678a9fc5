"""Atomic publication: a whole new file or the old one, never a temp file left behind."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prompt_banks.atomic import atomic_path, write_json_atomic, write_parquet_atomic


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_writers_publish_json_and_parquet(tmp_path: Path) -> None:
    write_json_atomic({"a": [1, 2]}, tmp_path / "x.json", indent=None)
    assert (tmp_path / "x.json").read_text() == '{"a": [1, 2]}\n'
    table = pa.table({"v": [1, 2, 3]})
    write_parquet_atomic(table, tmp_path / "x.parquet", fsync=True)
    assert pq.read_table(tmp_path / "x.parquet").equals(table)
    assert not list(tmp_path.glob(".*"))
