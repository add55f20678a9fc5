"""Is a Parquet part whole and of its table's schema? A cheap check on every read, a deep one for
`aape doctor`.

The cheap check reads only a part's footer: the file must be Parquet (a truncated or 0-byte file
has no footer), hold the table's columns with their types, and, where a row group stores one
`dim` (from the footer's statistics), hold `dim` floats per row in `embedding` (a footer count).
Its verdict is kept per (path, size) for the life of the process: parts are immutable, so a part
is checked once however many queries read it.

The deep check reads every row group and every row: a row group that cannot be decoded, a null
in a required column, or a vector whose length is not its row's `dim`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from prompt_banks.errors import UserError

FIX = "run `aape doctor --quarantine` on this home to move it aside (its readable rows are kept)"

FOOTER_THREADS = 8
# (path, size) -> the footer check's verdict (None: sound). Parts never change once published.
_VERDICTS: dict[tuple[str, int], str | None] = {}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _size(path: str, fs: fsspec.AbstractFileSystem | None) -> int:
    return os.stat(path).st_size if fs is None else int(fs.size(path))


def _metadata(path: str, fs: fsspec.AbstractFileSystem | None) -> pq.FileMetaData:
    if fs is None:
        return pq.read_metadata(path)
    with fs.open(path, "rb") as f:
        return pq.read_metadata(f)


def schema_problem(found: pa.Schema, expected: pa.Schema) -> str | None:
    """How `found` differs from `expected` in column names and types (nullability aside)."""
    names = [f.name for f in found]
    missing = [f.name for f in expected if f.name not in names]
    extra = [n for n in names if expected.get_field_index(n) < 0]
    if missing or extra:
        parts = [f"lacks {missing}" if missing else "", f"has extra {extra}" if extra else ""]
        return "another schema: it " + " and ".join(p for p in parts if p)
    for f in expected:
        got = found.field(f.name).type
        if got != f.type:
            return f"another schema: column '{f.name}' is {got}, expected {f.type}"
    return None


def _vector_count_problem(meta: pq.FileMetaData, names: list[str]) -> str | None:
    """Where a row group's footer says one `dim`, its `embedding` must hold rows x dim floats."""
    if "dim" not in names or "embedding" not in names:
        return None
    dim_col = names.index("dim")
    leaf = next(
        (
            i
            for i in range(meta.num_columns)
            if meta.schema.column(i).path.split(".")[0] == "embedding"
        ),
        None,
    )
    if leaf is None:
        return None
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        stats = group.column(dim_col).statistics
        if group.num_rows == 0 or stats is None or not stats.has_min_max or stats.min != stats.max:
            continue
        floats, expected = group.column(leaf).num_values, group.num_rows * int(stats.min)
        if floats != expected:
            return (
                f"metadata lies: column 'dim' says {stats.min} but row group {g} holds "
                f"{floats} floats for {group.num_rows} vectors"
            )
    return None


def footer_problem(
    path: str, expected: pa.Schema, fs: fsspec.AbstractFileSystem | None = None
) -> str | None:
    """Why the part at `path` is unusable, from its footer alone; None when it is sound."""
    try:
        if _size(path, fs) == 0:
            return "empty file (0 bytes)"
        meta = _metadata(path, fs)
        found = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:
        return f"not a readable Parquet file, truncated or overwritten ({_one_line(exc)})"
    return schema_problem(found, expected) or _vector_count_problem(meta, found.names)


def damaged_part_error(path: str, reason: str, what: str) -> UserError:
    return UserError(f"{what}: damaged part {path}: {reason}; {FIX}")


def shown(path: str, fs: fsspec.AbstractFileSystem | None) -> str:
    """`path` as a user would name it: a URL for a part on an fsspec filesystem."""
    return path if fs is None or "://" in path else fs.unstrip_protocol(path)


def check_parts(
    paths: Sequence[str],
    expected: pa.Schema,
    fs: fsspec.AbstractFileSystem | None = None,
    *,
    what: str,
) -> list[str]:
    """`paths` back when every part passes the footer check, else a UserError naming the first
    bad one and the fix. Each (path, size) is checked once per process; footers not seen yet are
    read by a few threads at once (on an object store each is a round trip)."""
    keys = []
    for path in paths:
        try:
            keys.append((path, _size(path, fs)))
        except OSError as exc:
            reason = f"cannot be read ({_one_line(exc)})"
            raise damaged_part_error(shown(path, fs), reason, what) from exc
    todo = [key for key in dict.fromkeys(keys) if key not in _VERDICTS]
    if todo:
        with ThreadPoolExecutor(max_workers=min(FOOTER_THREADS, len(todo))) as pool:
            found = list(pool.map(lambda key: footer_problem(key[0], expected, fs), todo))
        _VERDICTS.update(zip(todo, found, strict=True))
    for path, size in keys:
        problem = _VERDICTS[(path, size)]
        if problem is not None:
            raise damaged_part_error(shown(path, fs), problem, what)
    return list(paths)


def bad_vector_rows(table: pa.Table) -> np.ndarray:
    """A bool mask of the rows whose `embedding` holds other than `dim` floats."""
    lengths = pc.list_value_length(table.column("embedding")).fill_null(-1)
    bad = pc.not_equal(lengths, table.column("dim").cast(lengths.type)).fill_null(True)
    return np.asarray(bad.to_numpy(zero_copy_only=False), dtype=bool)


@dataclass
class PartReport:
    """What the deep check found in one part: `problem` is None for a sound part; `good` holds
    the rows that can still be read and pass the row checks (None when nothing is readable)."""

    path: str
    rows: int = 0
    problem: str | None = None
    good: pa.Table | None = None
    notes: list[str] = field(default_factory=list)


def _row_problems(table: pa.Table, expected: pa.Schema) -> tuple[pa.Table, list[str]]:
    """`table` without the rows that break a row rule, and what was wrong."""
    keep = np.ones(table.num_rows, dtype=bool)
    notes = []
    for f in expected:
        if not f.nullable:
            nulls = np.asarray(table.column(f.name).is_null())
            if nulls.any():
                notes.append(f"{int(nulls.sum())} rows with an empty '{f.name}'")
                keep &= ~nulls
    if "dim" in expected.names and "embedding" in expected.names:
        bad = bad_vector_rows(table)
        if bad.any():
            notes.append(f"{int(bad.sum())} vectors whose length is not their 'dim'")
            keep &= ~bad
    return table.filter(pa.array(keep)), notes


def _readable_groups(pf: pq.ParquetFile, notes: list[str]) -> list[pa.Table]:
    """The row groups that decode; a note for each that does not."""
    groups = []
    for g in range(pf.num_row_groups):
        try:
            groups.append(pf.read_row_group(g))
        except (OSError, pa.ArrowException) as exc:
            notes.append(f"row group {g} unreadable ({_one_line(exc)})")
    return groups


def deep_check(
    path: str, expected: pa.Schema, fs: fsspec.AbstractFileSystem | None = None
) -> PartReport:
    """Read every row group of a part; see `PartReport`."""
    report = PartReport(path)
    try:
        if _size(path, fs) == 0:
            report.problem = "empty file (0 bytes)"
            return report
        with contextlib.ExitStack() as stack:
            source = path if fs is None else stack.enter_context(fs.open(path, "rb"))
            pf = stack.enter_context(pq.ParquetFile(source))
            report.rows = pf.metadata.num_rows
            wrong = schema_problem(pf.schema_arrow, expected)
            groups = _readable_groups(pf, report.notes)
    except (OSError, pa.ArrowException) as exc:
        report.problem = f"not a readable Parquet file, truncated or overwritten ({_one_line(exc)})"
        return report
    if wrong is not None:  # rows of another table are no rows of this one
        report.problem = wrong
        return report
    relaxed = pa.schema([f.with_nullable(True) for f in expected])  # nulls are counted below
    table = pa.concat_tables(groups) if groups else relaxed.empty_table()
    good, notes = _row_problems(table.select(expected.names).cast(relaxed), expected)
    report.notes += notes
    if report.notes:
        report.problem = "; ".join(report.notes)
        report.good = good.cast(expected)
    return report
