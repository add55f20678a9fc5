"""The Parquet store: append-only files published atomically, read in place by DuckDB.

Layout under `<root>` (by default `$AAPE_HOME/banks`):
    descriptions/part-<time>-<uuid>.parquet
    embeddings/part-<time>-<uuid>.parquet

A writer never touches an existing file: it writes `.<name>.<pid>.<random>.tmp` and renames
it, so a reader listing `*.parquet` sees a whole file or nothing. Row keys make writes
idempotent; if two writers race, readers still see each key once (the newest row wins).

The root is a local folder (first-class: fsync + `os.replace`) or an fsspec URL (`s3://...`,
`gs://...`, `memory://...`); DuckDB reads URL roots through the same fsspec filesystem.

Readers read the live parts (`prompt_banks.parts`): after a compaction, the merged parts and not
their inputs. `connect(pin=snapshot)` reads exactly the rows of a snapshot (`snapshots/`,
`prompt_banks.snapshots`): the snapshot's domain, CLIP model and origin parts, wherever
compaction has moved their rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import fsspec
import numpy as np
import pyarrow as pa

from prompt_banks import schema
from prompt_banks.atomic import publish_part
from prompt_banks.errors import UserError
from prompt_banks.integrity import check_parts
from prompt_banks.parts import Part, live_parts
from prompt_banks.paths import banks_dir, is_url

if TYPE_CHECKING:
    from prompt_banks.snapshots import Snapshot

DESCRIPTIONS_DIR = "descriptions"
EMBEDDINGS_DIR = "embeddings"
SNAPSHOTS_DIR = "snapshots"
# The last row of a part whose length its name does not tell (a writer's part: read it whole).
_WHOLE = 2**62
# An embedding whose norm is further than this from 1 was not normalised by its writer.
_NORM_TOLERANCE = 1e-3


def utc_now() -> datetime:
    return datetime.now(UTC)


def _validated_table(rows: list[Mapping[str, Any]], table_schema: pa.Schema, what: str) -> pa.Table:
    try:
        table = pa.Table.from_pylist([dict(r) for r in rows], schema=table_schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, TypeError) as exc:
        raise UserError(f"{what}: rows do not match the schema ({exc})".replace("\n", " ")) from exc
    for field in table_schema:
        if not field.nullable and table.column(field.name).null_count:
            raise UserError(f"{what}: column '{field.name}' must not be empty")
    return table


def _embeddings_table(rows: list[Mapping[str, Any]]) -> pa.Table:
    """Build the embeddings table column-wise (a list of Python floats per row is slow at 100k
    rows x 512) and check every vector is finite and L2-normalised."""
    vectors = [np.asarray(r["embedding"], dtype=np.float32) for r in rows]
    flat = np.concatenate(vectors) if vectors else np.zeros(0, np.float32)
    if not np.isfinite(flat).all():
        raise UserError("embeddings: a vector holds NaN or inf; check the CLIP model's weights")
    norms = np.array([np.linalg.norm(v) for v in vectors])
    if len(norms) and np.abs(norms - 1).max() > _NORM_TOLERANCE:
        raise UserError(
            "embeddings: vectors must be L2-normalised (found a norm of "
            f"{norms[np.abs(norms - 1).argmax()]:.4f})"
        )
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in vectors])]).astype(np.int32)
    columns: dict[str, Any] = {}
    for field in schema.EMBEDDINGS:
        if field.name == "embedding":
            columns[field.name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        else:
            try:
                columns[field.name] = pa.array([r[field.name] for r in rows], type=field.type)
            except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
                raise UserError(
                    f"embeddings: column '{field.name}' is missing or has the wrong "
                    f"type ({exc})".replace("\n", " ")
                ) from exc
        if not field.nullable and columns[field.name].null_count:
            raise UserError(f"embeddings: column '{field.name}' must not be empty")
    return pa.table(columns, schema=schema.EMBEDDINGS)


class BankStore:
    """One prompt-bank store (descriptions + text embeddings) rooted at a folder or URL."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        raw = banks_dir() if root is None else root
        self.is_local = not is_url(raw)
        # A Path for a local root (what most callers join onto), the URL string otherwise.
        self.root: Path | str = (
            Path(str(raw).removeprefix("file://")) if self.is_local else str(raw)
        )
        self._fs: fsspec.AbstractFileSystem | None = None
        if not self.is_local:
            self._fs, _ = fsspec.core.url_to_fs(str(raw))
        self.pin: Snapshot | None = None

    def at(self, snapshot: Snapshot) -> BankStore:
        """This store read as of `snapshot`: every query sees exactly the snapshot's rows."""
        pinned = BankStore(self.root if self.is_local else str(self.root))
        pinned.pin = snapshot
        return pinned

    @property
    def filesystem(self) -> fsspec.AbstractFileSystem | None:
        """The fsspec filesystem of a URL root (what DuckDB must register), None when local."""
        return self._fs

    # -- paths ----------------------------------------------------------------------------
    def _join(self, *parts: str) -> Path | str:
        if self.is_local:
            return Path(self.root, *parts)
        return "/".join([str(self.root).rstrip("/"), *parts])

    @property
    def descriptions_dir(self) -> Path | str:
        return self._join(DESCRIPTIONS_DIR)

    @property
    def embeddings_dir(self) -> Path | str:
        return self._join(EMBEDDINGS_DIR)

    @property
    def snapshots_dir(self) -> Path | str:
        return self._join(SNAPSHOTS_DIR)

    def _parts(self, folder: Path | str) -> list[Part]:
        """The live parts of a table (never a `.tmp` in flight, never a merged input), oldest
        first."""
        return live_parts(folder)[0]

    def _files(self, folder: Path | str) -> list[str]:
        """The live files of a table as DuckDB reads them, oldest first."""
        return [p.url for p in self._parts(folder)]

    def file_count(self) -> int:
        """Published files in both tables (tests use it to show a no-op wrote nothing)."""
        return len(self._files(self.descriptions_dir)) + len(self._files(self.embeddings_dir))

    # -- reading --------------------------------------------------------------------------
    def _tables(self) -> list[tuple[str, Path | str, pa.Schema, str]]:
        """The tables `connect` opens as views: (name, folder, schema, key columns). A store
        with more tables (the caption bank, `aape.vl.bank`) extends this list."""
        return [
            ("descriptions", self.descriptions_dir, schema.DESCRIPTIONS, "row_key"),
            ("embeddings", self.embeddings_dir, schema.EMBEDDINGS, "text_hash, model_id"),
        ]

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with two views, `descriptions` and `embeddings`.

        The views keep the newest row per key, so a duplicate from a writer race or a superseded
        failed row is never seen. An empty table is still a view (with zero rows). The file list
        is fixed when the connection opens: later appends are not seen half-way through a query.
        `descriptions_all` and `embeddings_all` are every stored row, duplicates included: cheaper
        for questions that only need distinct keys. `descriptions_origin` and `embeddings_origin`
        add each row's `origin` (the writer's part it came from). On a pinned store (`at`) every
        view holds only the snapshot's rows."""
        con = duckdb.connect()
        if self._fs is not None:
            con.register_filesystem(self._fs)
        for name, folder, table_schema, key in self._tables():
            parts = self._parts(folder)
            check_parts([p.url for p in parts], table_schema, self._fs, what="store")
            self._table_views(con, name, parts, table_schema)
            con.execute(
                f"CREATE VIEW {name} AS SELECT * FROM {name}_all "
                f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY created_at DESC) = 1"
            )
        return con

    def _table_views(
        self, con: duckdb.DuckDBPyConnection, name: str, parts: list[Part], table_schema: pa.Schema
    ) -> None:
        """`<name>_origin` and `<name>_all` over `parts` (or the pin's rows of them)."""
        wanted = None if self.pin is None else set(self.pin.origins.get(name, ()))
        ranges: dict[str, list[Any]] = {"filename": [], "lo": [], "hi": [], "origin": []}
        for part in parts:
            start = 0
            for origin, rows in part.origins:
                if wanted is None or origin in wanted:
                    ranges["filename"].append(part.url)
                    ranges["lo"].append(start)
                    ranges["hi"].append(_WHOLE if rows < 0 else start + rows)
                    ranges["origin"].append(origin)
                start += max(rows, 0)
        if wanted is not None:
            self._check_pinned(name, wanted, set(ranges["origin"]))
        files = list(dict.fromkeys(ranges["filename"]))
        if not files:
            con.register(f"_{name}_empty", table_schema.empty_table())
            con.execute(
                f"CREATE VIEW {name}_origin AS SELECT *, NULL::VARCHAR AS origin FROM _{name}_empty"
            )
            con.execute(f"CREATE VIEW {name}_all AS SELECT * FROM _{name}_empty")
            return
        # A view cannot hold parameters, so the file list becomes a literal; the paths come from
        # our own listing and are quoted, never from user text.
        listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.register(f"_{name}_ranges", pa.table(ranges))
        con.execute(
            f"CREATE VIEW {name}_origin AS SELECT t.* EXCLUDE (filename, file_row_number), "
            f"r.origin FROM read_parquet([{listed}], filename = true, file_row_number = true) t "
            f"JOIN _{name}_ranges r ON t.filename = r.filename "
            f"AND t.file_row_number >= r.lo AND t.file_row_number < r.hi"
        )
        if self.pin is None:
            con.execute(f"CREATE VIEW {name}_all AS SELECT * FROM read_parquet([{listed}])")
            return
        column, value = (
            ("domain", self.pin.domain)
            if name == "descriptions"
            else ("model_id", self.pin.model_id)
        )
        con.register(f"_{name}_scope", pa.table({"value": pa.array([value], pa.string())}))
        con.execute(
            f"CREATE VIEW {name}_all AS SELECT * EXCLUDE (origin) FROM {name}_origin "
            f"WHERE {column} = (SELECT value FROM _{name}_scope)"
        )

    def _check_pinned(self, name: str, wanted: set[str], found: set[str]) -> None:
        gone = sorted(wanted - found)
        if gone:
            assert self.pin is not None
            raise UserError(
                f"snapshot {self.pin.id}: {len(gone)} {name} parts it was read from are gone "
                f"from {self.root} (e.g. {gone[0]}); the snapshot cannot be read exactly, "
                "pick another one from `aape bank history`"
            )

    def stored_description_keys(self, domain: str | Iterable[str] | None = None) -> set[str]:
        """Keys of rows that need no new call: status ok or dropped (a failed row may be retried).
        `domain` narrows to one domain or several."""
        with self.connect() as con:
            # A key is written again only after a failure, so any non-failed row settles it.
            sql = "SELECT DISTINCT row_key FROM descriptions_all WHERE status <> 'failed'"
            params: list[Any] = []
            if domain is not None:
                sql += " AND list_contains(?::VARCHAR[], domain)"
                params.append([domain] if isinstance(domain, str) else sorted(domain))
            return {r[0] for r in con.execute(sql, params).fetchall()}

    def embedded_hashes(self, model_id: str) -> set[str]:
        with self.connect() as con:
            rows = con.execute(
                "SELECT DISTINCT text_hash FROM embeddings_all WHERE model_id = ?", [model_id]
            ).fetchall()
        return {r[0] for r in rows}

    def model_dim(self, model_id: str) -> int | None:
        """The embedding size stored for a model id, or None when it has no embeddings yet."""
        with self.connect() as con:
            dims = con.execute(
                "SELECT DISTINCT dim FROM embeddings_all WHERE model_id = ?", [model_id]
            ).fetchall()
        if len(dims) > 1:
            raise UserError(
                f"store {self.root}: model '{model_id}' has embeddings of sizes "
                f"{sorted(d[0] for d in dims)}; remove the stray files under {self.embeddings_dir}"
            )
        return dims[0][0] if dims else None

    def check_model_dim(self, model_id: str, dim: int) -> None:
        """Refuse, before any work, a model whose stored embeddings have another size."""
        stored = self.model_dim(model_id)
        if stored is not None and stored != dim:
            raise UserError(
                f"store {self.root}: model '{model_id}' is stored with dim {stored}, this one has "
                f"dim {dim}; use a separate --home for a different CLIP"
            )

    # -- writing --------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.pin is not None:
            raise UserError(f"store: snapshot {self.pin.id} is read-only; write to the store")

    def _publish(self, table: pa.Table, folder: Path | str) -> str:
        return publish_part(table, folder, what="store")

    def append_descriptions(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store description rows whose key is new (or whose stored row failed). Returns how many
        were written. Rows must carry every column of `schema.DESCRIPTIONS` except `created_at`,
        which is filled in."""
        self._writable()
        now = utc_now()
        rows = list(rows)
        # A row key hashes its domain, so only the rows' own domains can hold it already.
        stored = self.stored_description_keys({str(r.get("domain")) for r in rows})
        fresh: dict[str, dict[str, Any]] = {}
        for row in rows:
            r = {"created_at": now, **row}
            if r["row_key"] not in stored:
                fresh[r["row_key"]] = r
        if not fresh:
            return 0
        table = _validated_table(list(fresh.values()), schema.DESCRIPTIONS, "descriptions")
        bad = set(table.column("status").to_pylist()) - set(schema.DESCRIPTION_STATUSES)
        if bad:
            raise UserError(
                f"descriptions: status {sorted(bad)} is not one of {schema.DESCRIPTION_STATUSES}"
            )
        bad = set(table.column("source").to_pylist()) - set(schema.DESCRIPTION_SOURCES)
        if bad:
            raise UserError(
                f"descriptions: source {sorted(bad)} is not one of {schema.DESCRIPTION_SOURCES}"
            )
        self._publish(table, self.descriptions_dir)
        return table.num_rows

    def append_embeddings(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store embedding rows for (text_hash, model_id) pairs not stored yet; returns how many
        were written. Refuses a model id whose stored dimension differs. Rows carry every column
        of `schema.EMBEDDINGS` except `created_at`; `embedding` may be a list or a NumPy array."""
        self._writable()
        now = utc_now()
        rows = [{"created_at": now, **r} for r in rows]
        if not rows:
            return 0
        by_model: dict[str, set[int]] = {}
        for r in rows:
            by_model.setdefault(r["model_id"], set()).add(int(r["dim"]))
            if len(r["embedding"]) != int(r["dim"]):
                raise UserError(
                    f"embeddings: row {r['text_hash']} has {len(r['embedding'])} floats, "
                    f"dim says {r['dim']}"
                )
        fresh: dict[tuple[str, str], dict[str, Any]] = {}
        for model_id, dims in by_model.items():
            if len(dims) > 1:
                raise UserError(
                    f"embeddings: model '{model_id}' given with dims {sorted(dims)} in one write; "
                    f"one model id has one size"
                )
            self.check_model_dim(model_id, next(iter(dims)))
            done = self.embedded_hashes(model_id)
            for r in rows:
                if r["model_id"] == model_id and r["text_hash"] not in done:
                    fresh[(r["text_hash"], model_id)] = r
        if not fresh:
            return 0
        table = _embeddings_table(list(fresh.values()))
        self._publish(table, self.embeddings_dir)
        return table.num_rows
