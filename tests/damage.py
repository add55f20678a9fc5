"""Ways a Parquet part gets damaged on disk, applied in place (tests of the integrity checks)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def truncate(path: Path) -> None:
    """The first half of the file, as a copy or a crash that stopped half-way leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def not_parquet(path: Path) -> None:
    path.write_text('{"this": "is JSON, not Parquet"}\n')


def another_schema(path: Path) -> None:
    """A whole, valid Parquet file, of some other table."""
    pq.write_table(pa.table({"image": ["a.png"], "score": [0.5]}), path)


DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated": truncate,
    "0 bytes": empty,
    "not Parquet": not_parquet,
    "another schema": another_schema,
}
# The first words of the one-line reason each damage gets.
REASONS = {
    "truncated": "not a readable Parquet file",
    "0 bytes": "empty file (0 bytes)",
    "not Parquet": "not a readable Parquet file",
    "another schema": "another schema",
}


def write_row_groups(table: pa.Table, path: Path, rows_per_group: int) -> None:
    pq.write_table(table, path, row_group_size=rows_per_group, compression="zstd")


def corrupt_row_group(path: Path, group: int) -> None:
    """Overwrite the pages of the first column of one row group; the footer stays sound."""
    column = pq.ParquetFile(path).metadata.row_group(group).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + column.total_compressed_size] = b"\xab" * column.total_compressed_size
    path.write_bytes(bytes(data))
