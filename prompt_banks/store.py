"""The Parquet store: append-only files published atomically, read in place by DuckDB.

Layout under `<root>` (by default `$AAPE_HOME/banks`):
    descriptions/part-<time>-<uuid>.parquet
    embeddings/part-<time>-<uuid>.parquet

A writer never touches an existing file: it writes `<name>.parquet.tmp` and renames it, so a
reader globbing `*.parquet` sees a whole file or nothing. Row keys make writes idempotent; if two
writers race, readers still see each key once (the newest row wins).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from prompt_banks import schema
from prompt_banks.errors import UserError
from prompt_banks.paths import banks_dir

DESCRIPTIONS_DIR = "descriptions"
EMBEDDINGS_DIR = "embeddings"


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


class BankStore:
    """One prompt-bank store (descriptions + text embeddings) rooted at a folder."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else banks_dir()

    # -- paths ----------------------------------------------------------------------------
    @property
    def descriptions_dir(self) -> Path:
        return self.root / DESCRIPTIONS_DIR

    @property
    def embeddings_dir(self) -> Path:
        return self.root / EMBEDDINGS_DIR

    def _glob(self, folder: Path) -> str | None:
        """A read_parquet glob for a table, or None while the table has no file yet."""
        if not folder.is_dir() or not any(folder.glob("*.parquet")):
            return None
        return str(folder / "*.parquet")

    # -- reading --------------------------------------------------------------------------
    def connect(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with two views, `descriptions` and `embeddings`.

        The views keep the newest row per key, so a duplicate from a writer race or a superseded
        failed row is never seen. An empty table is still a view (with zero rows)."""
        con = duckdb.connect()
        for name, folder, table_schema, key in (
            ("descriptions", self.descriptions_dir, schema.DESCRIPTIONS, "row_key"),
            ("embeddings", self.embeddings_dir, schema.EMBEDDINGS, "text_hash, model_id"),
        ):
            glob = self._glob(folder)
            if glob is None:
                con.register(f"_{name}_empty", table_schema.empty_table())
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_empty")
            else:
                con.execute(
                    f"CREATE VIEW {name} AS SELECT * FROM read_parquet(?) "
                    f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY created_at DESC) = 1",
                    [glob],
                )
        return con

    def stored_description_keys(self, domain: str | None = None) -> set[str]:
        """Keys of rows that need no new call: status ok or dropped (a failed row may be retried)."""
        with self.connect() as con:
            sql = "SELECT row_key FROM descriptions WHERE status <> 'failed'"
            params: list[Any] = []
            if domain is not None:
                sql += " AND domain = ?"
                params.append(domain)
            return {r[0] for r in con.execute(sql, params).fetchall()}

    def embedded_hashes(self, model_id: str) -> set[str]:
        with self.connect() as con:
            rows = con.execute(
                "SELECT text_hash FROM embeddings WHERE model_id = ?", [model_id]
            ).fetchall()
        return {r[0] for r in rows}

    def model_dim(self, model_id: str) -> int | None:
        """The embedding size stored for a model id, or None when it has no embeddings yet."""
        with self.connect() as con:
            dims = con.execute(
                "SELECT DISTINCT dim FROM embeddings WHERE model_id = ?", [model_id]
            ).fetchall()
        if len(dims) > 1:
            raise UserError(
                f"store {self.root}: model '{model_id}' has embeddings of sizes "
                f"{sorted(d[0] for d in dims)}; remove the stray files under {self.embeddings_dir}"
            )
        return dims[0][0] if dims else None

    # -- writing --------------------------------------------------------------------------
    def _publish(self, table: pa.Table, folder: Path) -> Path:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"store: cannot create {folder} ({exc.strerror}); pick a writable --home") from exc
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        final = folder / name
        tmp = folder / f".{name}.tmp"
        try:
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise UserError(f"store: cannot write {final} ({exc.strerror}); pick a writable --home") from exc
        return final

    def append_descriptions(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store description rows whose key is new (or whose stored row failed). Returns how many
        were written. Rows must carry every column of `schema.DESCRIPTIONS` except `created_at`,
        which is filled in."""
        now = utc_now()
        stored = self.stored_description_keys()
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
            raise UserError(f"descriptions: status {sorted(bad)} is not one of {schema.DESCRIPTION_STATUSES}")
        self._publish(table, self.descriptions_dir)
        return table.num_rows

    def append_embeddings(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store embedding rows for (text_hash, model_id) pairs not stored yet. Refuses a model id
        whose stored dimension differs."""
        now = utc_now()
        rows = [{"created_at": now, **r} for r in rows]
        if not rows:
            return 0
        by_model: dict[str, set[int]] = {}
        for r in rows:
            by_model.setdefault(r["model_id"], set()).add(int(r["dim"]))
            if len(r["embedding"]) != int(r["dim"]):
                raise UserError(f"embeddings: row {r['text_hash']} has {len(r['embedding'])} floats, dim says {r['dim']}")
        fresh: dict[tuple[str, str], dict[str, Any]] = {}
        for model_id, dims in by_model.items():
            stored_dim = self.model_dim(model_id)
            if len(dims) > 1 or (stored_dim is not None and dims != {stored_dim}):
                raise UserError(
                    f"embeddings: model '{model_id}' is stored with dim {stored_dim}, got "
                    f"{sorted(dims)}; use a separate --home for a different CLIP"
                )
            done = self.embedded_hashes(model_id)
            for r in rows:
                if r["model_id"] == model_id and r["text_hash"] not in done:
                    fresh[(r["text_hash"], model_id)] = r
        if not fresh:
            return 0
        table = _validated_table(list(fresh.values()), schema.EMBEDDINGS, "embeddings")
        self._publish(table, self.embeddings_dir)
        return table.num_rows
