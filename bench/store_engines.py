"""Benchmark: the bank store's growth problem on DuckLake and on Delta Lake, to choose the engine.

The same workload as `bench/store_growth.py` (`--days` appends of descriptions + 512-d
embeddings, `--rows` in all, vs one write), on the two lakehouse formats, before and after
their own compaction:
- DuckLake (DuckDB catalog file + Parquet data; `ducklake_merge_adjacent_files`, then
  `ducklake_expire_snapshots` + `ducklake_cleanup_old_files`);
- Delta Lake through `deltalake` (`optimize.compact` + `vacuum`), read by DuckDB from the
  live file list (`DeltaTable.file_uris`).
Figures (median of `--repeats`): the bank read (descriptions joined to embeddings, newest row
per key), a `stats`-like group-by, one more append, and files on disk.

DuckLake's extension needs DuckDB 1.5.x and this project pins DuckDB 2.x, so this script runs in
a separate environment, not the project's:

    python -m venv /tmp/engines && /tmp/engines/bin/pip install "duckdb>=1.5,<1.6" \\
        duckdb-extension-ducklake deltalake pyarrow numpy
    /tmp/engines/bin/python bench/store_engines.py
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

DIM = 512
CLASSES = 100

READ = (
    "WITH d AS (SELECT * FROM {desc} QUALIFY row_number() OVER (PARTITION BY row_key "
    "ORDER BY created_at DESC) = 1), e AS (SELECT * FROM {emb} QUALIFY row_number() OVER "
    "(PARTITION BY text_hash ORDER BY created_at DESC) = 1) "
    "SELECT d.class_name, e.embedding FROM d JOIN e USING (text_hash) "
    "WHERE d.domain = 'bench' AND d.status = 'ok' ORDER BY d.class_name, d.row_key"
)
STATS = (
    "SELECT class_name, status, count(*) FROM (SELECT * FROM {desc} QUALIFY row_number() OVER "
    "(PARTITION BY row_key ORDER BY created_at DESC) = 1) WHERE domain = 'bench' "
    "GROUP BY ALL ORDER BY ALL"
)


def day_tables(day: int, n: int, rng: np.random.Generator) -> tuple[pa.Table, pa.Table]:
    texts = [f"Day {day}, row {i}: a photo with feature {rng.random()}." for i in range(n)]
    hashes = [hashlib.sha256(t.encode()).hexdigest()[:32] for t in texts]
    now = pa.array([time.time_ns() // 1000] * n, pa.timestamp("us", tz="UTC"))
    desc = pa.table(
        {
            "row_key": [f"{day}-{i}" for i in range(n)],
            "domain": ["bench"] * n,
            "class_name": [f"class {(day * n + i) % CLASSES}" for i in range(n)],
            "llm_model": ["qwen2.5-7b"] * n,
            "clean_text": texts,
            "text_hash": hashes,
            "status": ["ok"] * n,
            "created_at": now,
        }
    )
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    emb = pa.table(
        {
            "text_hash": hashes,
            "model_id": ["bench-clip"] * n,
            # a variable-length list, as the project stores it (DuckLake has no FLOAT[d] type)
            "embedding": pa.ListArray.from_arrays(
                pa.array(np.arange(n + 1, dtype=np.int32) * DIM), pa.array(v.reshape(-1))
            ),
            "created_at": now,
        }
    )
    return desc, emb


class DuckLake:
    name = "ducklake"

    def __init__(self, root: Path) -> None:
        import duckdb_extension_ducklake as ext  # the extension, installed from PyPI

        root.mkdir(parents=True)
        self.root = root
        self.con = duckdb.connect()
        path = Path(ext.__file__).parent / f"extensions/v{duckdb.__version__}"
        self.con.execute(f"LOAD '{path / 'ducklake.duckdb_extension'}'")
        self.con.execute(
            f"ATTACH 'ducklake:{root / 'meta.ducklake'}' AS lake "
            f"(DATA_PATH '{root / 'data'}/', DATA_INLINING_ROW_LIMIT 0)"
        )
        self.tables = False

    def append(self, desc: pa.Table, emb: pa.Table) -> None:
        for name, table in (("descriptions", desc), ("embeddings", emb)):
            self.con.register("_new", table)
            if not self.tables:
                self.con.execute(f"CREATE TABLE lake.{name} AS SELECT * FROM _new")
            else:
                self.con.execute(f"INSERT INTO lake.{name} SELECT * FROM _new")
            self.con.unregister("_new")
        self.tables = True

    def query(self, sql: str) -> list:
        return self.con.execute(
            sql.format(desc="lake.descriptions", emb="lake.embeddings")
        ).fetchall()

    def compact(self) -> None:
        self.con.execute("CALL ducklake_merge_adjacent_files('lake')")
        self.con.execute("CALL ducklake_expire_snapshots('lake', older_than => now())")
        self.con.execute("CALL ducklake_cleanup_old_files('lake', cleanup_all => true)")

    def files(self) -> int:
        return sum(len(f) for _, _, f in os.walk(self.root))


class Delta:
    name = "delta"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.con = duckdb.connect()

    def append(self, desc: pa.Table, emb: pa.Table) -> None:
        from deltalake import write_deltalake

        write_deltalake(str(self.root / "descriptions"), desc, mode="append")
        write_deltalake(str(self.root / "embeddings"), emb, mode="append")

    def _files(self, table: str) -> str:
        from deltalake import DeltaTable

        uris = DeltaTable(str(self.root / table)).file_uris()
        return "read_parquet([" + ", ".join(f"'{u}'" for u in uris) + "])"

    def query(self, sql: str) -> list:
        return self.con.execute(
            sql.format(desc=self._files("descriptions"), emb=self._files("embeddings"))
        ).fetchall()

    def compact(self) -> None:
        from deltalake import DeltaTable

        for table in ("descriptions", "embeddings"):
            dt = DeltaTable(str(self.root / table))
            dt.optimize.compact()
            dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
            dt.create_checkpoint()
            dt.cleanup_metadata()

    def files(self) -> int:
        return sum(len(f) for _, _, f in os.walk(self.root))


def timed(fn: Callable[[], object], repeats: int) -> float:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def measure(store, repeats: int, day: int) -> dict[str, float]:
    rng = np.random.default_rng(day)
    extra = iter([day_tables(day + k, 22, rng) for k in range(repeats)])
    figures = {"files": float(store.files())}
    figures["bank read (s)"] = timed(lambda: store.query(READ), repeats)
    figures["stats (s)"] = timed(lambda: store.query(STATS), repeats)
    figures["one more append (s)"] = timed(lambda: store.append(*next(extra)), repeats)
    return figures


def growth_args(doc: str) -> argparse.Namespace:
    """The workload's size (this script's and `store_growth.py`'s): days, rows, repeats."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--rows", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=5)
    return ap.parse_args()


def main() -> None:
    args = growth_args(__doc__ or "")
    rng = np.random.default_rng(0)
    per_day = [args.rows // args.days + (d < args.rows % args.days) for d in range(args.days)]
    batches = [day_tables(d, n, rng) for d, n in enumerate(per_day)]
    whole = tuple(pa.concat_tables([b[i] for b in batches]) for i in (0, 1))
    print(f"duckdb {duckdb.__version__}; {args.days} appends, {args.rows} rows, d={DIM}")
    with tempfile.TemporaryDirectory() as tmp:
        for engine in (DuckLake, Delta):
            grown, single = engine(Path(tmp, engine.name, "g")), engine(Path(tmp, engine.name, "s"))
            started = time.perf_counter()
            for b in batches:
                grown.append(*b)
            build_s = time.perf_counter() - started
            single.append(*whole)
            figs = [(measure(grown, args.repeats, 10_000), measure(single, args.repeats, 10_000))]
            grown.compact()
            single.compact()
            figs.append(
                (measure(grown, args.repeats, 20_000), measure(single, args.repeats, 20_000))
            )
            print(f"\n{engine.name}: {args.days} appends took {build_s:.1f} s")
            for key in figs[0][0]:
                cells = [f"{g[key]:>9.4g} {s[key]:>9.4g} {g[key] / s[key]:>6.2f}x" for g, s in figs]
                print(
                    f"  {key:<22}{cells[0]}   | {cells[1]}   (grown single ratio: before | after)"
                )


if __name__ == "__main__":
    main()
