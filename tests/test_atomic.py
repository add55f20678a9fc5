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


def test_threads_of_one_process_publish_one_file_at_once(tmp_path) -> None:
    """Two threads writing the same file (a few-shot manifest of one draw) both succeed, and
    the file is one of their whole texts."""
    from concurrent.futures import ThreadPoolExecutor

    from prompt_banks.atomic import write_text_atomic

    target = tmp_path / "shots2-seed1.json"
    texts = [f"{i}\n" * 20_000 for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda t: write_text_atomic(t, target), texts * 4))
    assert target.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
