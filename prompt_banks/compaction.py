"""Compaction: merge the small parts of an append-only Parquet folder into large ones.

One run over a folder:
1. delete what earlier runs left: parts replaced by a live merged part published more than
   `grace_s` ago, and temp files of a compaction killed mid-write;
2. read the small live parts (oldest first) and write them as one merged part: rows in the same
   order, each run of rows tagged with its origin in the footer (`prompt_banks.parts`). A row
   that two overlapping merged parts both hold (two compactions raced) is kept once, by origin;
3. publish it (temp file, fsync, rename) and check it is listed and whole;
4. only then delete the inputs, at once when `grace_s` is 0, else in a later run once the grace
   has passed, so a reader that listed the folder before the publish can still open them.

A kill -9 at any point leaves a state readers see whole: before step 3 the inputs are live and
the temp file is hidden; after it the merged part is live and every input is excluded, deleted
or not. A lock file per folder keeps two compactions from merging the same parts (a lock whose
process is gone, or older than `LOCK_LEASE_S`, is taken over: its holder was killed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from prompt_banks import schema
from prompt_banks.atomic import publish_part
from prompt_banks.errors import UserError
from prompt_banks.parts import (
    MERGED_SUFFIX,
    ORIGINS_KEY,
    REPLACES_KEY,
    Part,
    folder_fs,
    live_parts,
    name_time_ns,
    part_basename,
    published,
    remove,
)
from prompt_banks.snapshots import SNAPSHOTS
from prompt_banks.store import BankStore

log = logging.getLogger(__name__)

# A reader that listed a folder just before a merge may open the merged inputs this long after.
DEFAULT_GRACE_S = 15 * 60.0
# Parts at least this large are left as they are; a merged part is at most about this large.
DEFAULT_TARGET_BYTES = 256 * 2**20
LOCK_NAME = "_compaction.lock"
LOCK_LEASE_S = 3600.0

Stage = Callable[[str, str], None]


@dataclass
class CompactReport:
    """What one compaction of one folder did."""

    folder: str
    merged: int = 0  # input parts merged in this run
    rows: int = 0  # rows in the parts written
    written: list[str] = field(default_factory=list)  # merged parts published
    deleted: int = 0  # replaced parts and stale temp files removed
    pending: int = 0  # replaced parts kept until the grace has passed
    files_before: int = 0  # live parts before
    files_after: int = 0  # live parts after
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _merged_name() -> str:
    return f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{MERGED_SUFFIX}"


@contextlib.contextmanager
def _lock(folder: Path | str) -> Iterator[None]:
    fs, path = folder_fs(folder)
    lock = f"{path}/{LOCK_NAME}"
    stamp = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "at": time.time()})
    if fs is None:
        Path(path).mkdir(parents=True, exist_ok=True)
        _take_local_lock(lock, stamp.encode())
    else:
        fs.makedirs(path, exist_ok=True)
        if fs.exists(lock) and time.time() - _lock_time(fs.cat_file(lock)) < LOCK_LEASE_S:
            raise _held(lock)
        fs.pipe_file(lock, stamp.encode())  # object stores have no exclusive create: best effort
    try:
        yield
    finally:
        remove(lock, fs)


def _lock_time(raw: bytes) -> float:
    """When the lock was taken; 0 (stale) when unreadable or its holder is a dead process of
    this host (killed: a lock outlives a kill -9)."""
    try:
        held = json.loads(raw)
        at = float(held["at"])
    except (ValueError, KeyError, TypeError):
        return 0.0  # a holder killed while writing it
    if held.get("host") == socket.gethostname():
        try:
            os.kill(int(held["pid"]), 0)
        except ProcessLookupError:
            return 0.0
        except (PermissionError, ValueError, TypeError):
            pass  # alive under another user, or no pid: trust the time
    return at


def _held(lock: str) -> UserError:
    return UserError(
        f"compaction: {lock} is held by another compaction; wait for it to finish (a lock "
        f"older than {LOCK_LEASE_S:.0f} s is taken over)"
    )


def _take_local_lock(lock: str, stamp: bytes) -> None:
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - _lock_time(Path(lock).read_bytes()) >= LOCK_LEASE_S:
                    os.unlink(lock)  # its holder was killed
                    continue
            raise _held(lock) from None
        with os.fdopen(fd, "wb") as f:
            f.write(stamp)
        return
    raise _held(lock)


def _read(part: Part, fs: fsspec.AbstractFileSystem | None, columns: list[str]) -> pa.Table:
    if fs is None:
        return pq.read_table(part.path, columns=columns)
    with fs.open(part.path, "rb") as f:
        return pq.read_table(f, columns=columns)


def _collect_garbage(
    folder: Path | str, grace_s: float, report: CompactReport, stage: Stage
) -> None:
    """Delete replaced parts whose replacement is older than the grace, and dead temp files."""
    paths, fs = published(folder)
    now = time.time_ns()
    parts = [p for p in live_parts(folder)[0] if p.merged]
    old_enough: set[str] = set()
    for p in parts:
        born = name_time_ns(p.name) or now
        if now - born >= grace_s * 1e9:
            old_enough |= p.replaces
    for path in paths:
        name = part_basename(path)
        if name in old_enough:
            stage("delete", name)
            report.deleted += remove(path, fs)
        elif any(name in p.replaces for p in parts):
            report.pending += 1
    _, root = folder_fs(folder)
    temps = (
        [str(p) for p in Path(root).glob(f".part-*{MERGED_SUFFIX}*.tmp")]
        if fs is None
        else [t for t in fs.glob(f"{root}/.part-*{MERGED_SUFFIX}*.tmp")]
    )
    for tmp in temps:
        born = name_time_ns(part_basename(tmp)) or now
        if now - born >= max(grace_s, LOCK_LEASE_S) * 1e9:
            report.deleted += remove(tmp, fs)


def _batches(parts: list[Part], sizes: list[int], target_bytes: int) -> list[list[Part]]:
    """Consecutive runs of small parts, each run at most about `target_bytes`."""
    runs: list[list[Part]] = [[]]
    total = 0
    for part, size in zip(parts, sizes, strict=True):
        if size >= target_bytes:
            runs.append([])
            total = 0
            continue
        if runs[-1] and total + size > target_bytes:
            runs.append([])
            total = 0
        runs[-1].append(part)
        total += size
    return [r for r in runs if len(r) > 1]


def _merge(
    inputs: list[Part], fs: fsspec.AbstractFileSystem | None, table_schema: pa.Schema
) -> tuple[pa.Table, list[list[object]], set[str]]:
    """The inputs' rows in order, their origin runs, and every name the merged part replaces."""
    columns = table_schema.names
    pieces: list[pa.Table] = []
    origins: list[list[object]] = []
    taken: set[str] = set()
    replaces: set[str] = set()
    for part in inputs:
        table = _read(part, fs, columns)
        replaces |= {part.name} | set(part.replaces)
        runs = part.origins if part.merged else ((part.name, table.num_rows),)
        start = 0
        for origin, rows in runs:
            if origin not in taken:  # an origin two raced merges both hold is kept once
                pieces.append(table.slice(start, rows))
                origins.append([origin, rows])
                taken.add(origin)
            start += rows
    merged = pa.concat_tables([p.cast(table_schema) for p in pieces])
    return merged, origins, replaces


def _log_stage(folder: Path | str, stage: str, detail: str) -> None:
    level = logging.DEBUG if stage == "delete" else logging.INFO  # one line per file: debug
    log.log(level, "compaction %s: %s %s", folder, stage, detail)


def compact_folder(
    folder: Path | str,
    table_schema: pa.Schema,
    *,
    what: str,
    grace_s: float = DEFAULT_GRACE_S,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    on_stage: Stage | None = None,
) -> CompactReport:
    """Compact one folder of parts of `table_schema` (see the module doc). `on_stage(stage,
    detail)` is told each step: "merge", "published", "delete"."""
    if grace_s < 0:
        raise UserError(f"--grace: {grace_s} must be 0 or more seconds")
    started = time.perf_counter()
    stage = on_stage or (lambda s, d: _log_stage(folder, s, d))
    report = CompactReport(folder=str(folder))
    if not published(folder)[0]:
        return report  # nothing stored here (yet): leave the folder as it is
    with _lock(folder):
        _collect_garbage(folder, grace_s, report, stage)
        parts, fs = live_parts(folder)
        report.files_before = len(parts)
        sizes = [os.path.getsize(p.path) if fs is None else int(fs.size(p.path)) for p in parts]
        for inputs in _batches(parts, sizes, target_bytes):
            table, origins, replaces = _merge(inputs, fs, table_schema)
            stage("merge", f"{len(inputs)} parts, {table.num_rows} rows")
            meta = {
                ORIGINS_KEY: json.dumps(origins).encode(),
                REPLACES_KEY: json.dumps(sorted(replaces)).encode(),
            }
            name = _merged_name()
            table = table.replace_schema_metadata(meta)
            written = publish_part(table, folder, what=what, name=name)
            _check_visible(folder, name, table.num_rows)
            stage("published", name)
            report.written.append(written)
            report.merged += len(inputs)
            report.rows += table.num_rows
            if grace_s == 0:
                for part in inputs:
                    stage("delete", part.name)
                    report.deleted += remove(part.path, fs)
                _collect_garbage(folder, 0.0, report, stage)  # inputs of merged inputs
            else:
                report.pending += len(inputs)
        report.files_after = len(live_parts(folder)[0])
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _check_visible(folder: Path | str, name: str, rows: int) -> None:
    """The merged part is listed live and its footer holds every row; else nothing is deleted."""
    parts, fs = live_parts(folder)
    found = next((p for p in parts if p.name == name), None)
    if found is None or sum(n for _, n in found.origins) != rows:
        raise UserError(
            f"compaction: the merged part {name} is not visible in {folder} after publishing; "
            "no part was deleted, run the compaction again"
        )
    meta = (
        pq.read_metadata(found.path) if fs is None else pq.ParquetFile(fs.open(found.path)).metadata
    )
    if meta.num_rows != rows:
        raise UserError(
            f"compaction: the merged part {name} holds {meta.num_rows} rows, not {rows}; "
            "no part was deleted, run the compaction again"
        )


def compact_store(
    store: BankStore, *, grace_s: float = DEFAULT_GRACE_S, on_stage: Stage | None = None
) -> list[CompactReport]:
    """Compact the three tables of a bank store: descriptions, embeddings, snapshots."""
    if store.pin is not None:
        raise UserError(f"compaction: snapshot {store.pin.id} is read-only; compact the store")
    return [
        compact_folder(folder, table_schema, what="store", grace_s=grace_s, on_stage=on_stage)
        for folder, table_schema in (
            (store.descriptions_dir, schema.DESCRIPTIONS),
            (store.embeddings_dir, schema.EMBEDDINGS),
            (store.snapshots_dir, SNAPSHOTS),
        )
    ]
