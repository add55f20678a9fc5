"""Benchmark: what the footer check of every part costs a store read.

A store of `--parts` parts (half descriptions, half embeddings at d = 512), then, in one run:
- "check cold": `check_parts` over every part with an empty verdict cache (a fresh process:
  what each CLI command pays once);
- "check warm": the same again (verdicts kept per name + size: one stat per part);
- "stats": `prompt_banks.queries.stats` on the domain (two connections, several queries) with the
  check as shipped (verdict cache emptied before each call, or kept), and with the check
  replaced by a plain pass-through; interleaved, best of 3 each.
It prints the seconds of each and the check's share of a `stats` call.

    PYTHONPATH=. .venv/bin/python bench/part_validation.py --parts 700
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import prompt_banks.store as store_module
from prompt_banks import integrity, schema
from prompt_banks.queries import stats
from prompt_banks.store import BankStore


def _rows(part: int, n: int, dim: int) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(part)
    descriptions, embeddings = [], []
    for i in range(n):
        text = f"description {part}-{i} of a class"
        key = schema.description_row_key(
            domain="bench", class_name=f"class {i % 10}", source="import", question=None,
            sample_index=part * n + i, llm_model=None, llm_params=None, raw_text=text,
        )  # fmt: skip
        descriptions.append({
            "row_key": key, "domain": "bench", "class_name": f"class {i % 10}",
            "raw_class_name": f"class {i % 10}", "source": "import", "question": None,
            "sample_index": part * n + i, "llm_model": None, "llm_params": None,
            "raw_text": text, "clean_text": text, "status": "ok", "error": None,
        })  # fmt: skip
        v = rng.normal(size=dim).astype(np.float32)
        embeddings.append({
            "text_hash": schema.text_hash(text), "model_id": "bench/model", "dim": dim,
            "embedding": v / np.linalg.norm(v), "n_tokens": 9, "truncated": False,
        })  # fmt: skip
    return descriptions, embeddings


def build(root: Path, parts: int, rows: int, dim: int) -> BankStore:
    store = BankStore(root)
    for p in range(parts // 2):
        descriptions, embeddings = _rows(p, rows, dim)
        store._publish(
            store_module._validated_table(
                [{"created_at": store_module.utc_now(), **r} for r in descriptions],
                schema.DESCRIPTIONS,
                "descriptions",
            ),
            store.descriptions_dir,
        )
        store._publish(
            store_module._embeddings_table(
                [{"created_at": store_module.utc_now(), **r} for r in embeddings]
            ),
            store.embeddings_dir,
        )
    return store


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", type=int, default=700)
    parser.add_argument("--rows", type=int, default=20, help="rows per part")
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = build(Path(tmp) / "banks", args.parts, args.rows, args.dim)
        files = [
            (store._files(store.descriptions_dir), schema.DESCRIPTIONS),
            (store._files(store.embeddings_dir), schema.EMBEDDINGS),
        ]
        n = sum(len(f) for f, _ in files)

        def check() -> None:
            for paths, table_schema in files:
                integrity.check_parts(paths, table_schema, what="store")

        integrity._VERDICTS.clear()
        cold = timed(check)
        warm = timed(check, repeat=5)

        def stats_cold_cache() -> None:
            integrity._VERDICTS.clear()
            stats(store, "bench")

        shipped = store_module.check_parts

        def stats_unchecked() -> None:
            store_module.check_parts = lambda paths, *a, **k: list(paths)  # type: ignore
            try:
                stats(store, "bench")
            finally:
                store_module.check_parts = shipped

        stats_unchecked()  # warm the OS page cache and DuckDB before any timing
        # Interleaved, best of 3 each, so drift on a busy machine hits all three alike.
        best = {"none": float("inf"), "cold": float("inf"), "warm": float("inf")}
        for _ in range(3):
            best["none"] = min(best["none"], timed(stats_unchecked))
            best["cold"] = min(best["cold"], timed(stats_cold_cache))
            best["warm"] = min(best["warm"], timed(lambda: stats(store, "bench")))
        stats_none, stats_cold, stats_warm = best["none"], best["cold"], best["warm"]
    print(f"store: {n} parts ({args.rows} rows each, d = {args.dim})")
    print(f"check cold: {cold * 1e3:8.1f} ms  ({cold / n * 1e6:.0f} us/part)")
    print(f"check warm: {warm * 1e3:8.1f} ms  ({warm / n * 1e6:.1f} us/part)")
    print(f"stats, no check:    {stats_none * 1e3:8.1f} ms")
    print(
        f"stats, cold check:  {stats_cold * 1e3:8.1f} ms  "
        f"(x{stats_cold / stats_none:.2f} of no check)"
    )
    print(
        f"stats, warm check:  {stats_warm * 1e3:8.1f} ms  "
        f"(x{stats_warm / stats_none:.2f} of no check)"
    )


if __name__ == "__main__":
    main()
