"""Publish files atomically: write a hidden temp file beside the target, then `os.replace` it.

A reader sees the old file, the whole new one, or nothing; never a half-written file. The temp
name (`.<name>.<pid>.tmp`) is hidden and ends in `.tmp`, so globs such as `*.parquet` or
`part-*.parquet` never list a file still being written.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def part_name() -> str:
    """The file name of a new append-only Parquet part: sorts by creation time, and is unique
    across concurrent writers."""
    return f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path` to write; on success publish it as `path` (after an
    fsync when `fsync`, so the rename never publishes data still in the page cache), on any
    error delete it and re-raise. The caller creates the folder."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> Path:
    """Publish `text` (UTF-8) as `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(obj: Any, path: str | os.PathLike[str], **dumps: Any) -> Path:
    """Publish `obj` as JSON (indent 2 unless `dumps` says otherwise, trailing newline)."""
    return write_text_atomic(json.dumps(obj, **{"indent": 2, **dumps}) + "\n", path)


def write_parquet_atomic(
    table: pa.Table, path: str | os.PathLike[str], *, fsync: bool = False
) -> Path:
    """Publish `table` as a zstd Parquet file."""
    with atomic_path(path, fsync=fsync) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)
