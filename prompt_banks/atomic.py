"""Publish files atomically: write a hidden temp file beside the target, then `os.replace` it.

A reader sees the old file, the whole new one, or nothing; never a half-written file. The temp
name (`.<name>.<pid>.<random>.tmp`) is hidden and ends in `.tmp`, so globs such as `*.parquet` or
`part-*.parquet` never list a file still being written.

`publish_part` publishes a new Parquet part of an append-only store, to a local folder or to an
fsspec URL (where the temp object is moved into place instead of renamed).
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

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from prompt_banks.errors import UserError
from prompt_banks.paths import is_url


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
    # Unique per writer, threads of one process included: two writers of one file never share
    # a temp file, and the last rename wins with a whole file.
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(final)  # a failed write (a full disk) names the file it was for
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


def publish_part(
    table: pa.Table, folder: str | os.PathLike[str], *, what: str, name: str | None = None
) -> str:
    """Publish `table` as a new part (`name`, default `part_name()`) in `folder`, a local folder
    (fsync + rename) or an fsspec URL; returns the part's path or URL. An unwritable place is a
    UserError naming `what` (the store), and leaves no part behind."""
    name = name or part_name()
    if is_url(folder):
        return _publish_remote(table, str(folder).rstrip("/"), name, what)
    folder = Path(str(folder).removeprefix("file://"))
    final = folder / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(table, final, fsync=True)
    except OSError as exc:
        raise UserError(
            f"{what}: cannot write {final} ({exc.strerror}); pick a writable --home"
        ) from exc
    return str(final)


def _publish_remote(table: pa.Table, folder: str, name: str, what: str) -> str:
    fs, _ = fsspec.core.url_to_fs(folder)
    final, tmp = f"{folder}/{name}", f"{folder}/.{name}.tmp"
    try:
        fs.makedirs(folder, exist_ok=True)
        with fs.open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
        # On object stores the copy behind `mv` appears whole or not at all.
        fs.mv(tmp, final)
    except OSError as exc:
        if fs.exists(tmp):
            fs.rm(tmp)
        reason = str(exc).replace("\n", " ")
        raise UserError(
            f"{what}: cannot write {final} ({reason}); check the URL and its credentials"
        ) from exc
    return final
