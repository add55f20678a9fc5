"""Benchmark: a bank store grown by daily appends vs the same rows written once, before and after
`aape bank compact`, side by side in one run.

Two stores hold the same rows of one domain (`--rows` descriptions and their embeddings):
- "grown": `--days` appends, one descriptions part and one embeddings part each, with the two
  snapshots a daily regeneration records (`bank generate` and `bank embed`);
- "single": one append of everything, and the same two snapshots.
Figures, each the median of `--repeats` runs on both stores, as grown / single:
- training's bank read: `prompt_banks.snapshots.pinned_bank` (current snapshot, recorded, then
  the pinned read of the bank tensor), as `aape train` reads it;
- `stats`: `prompt_banks.queries.stats`, as `aape bank stats` runs;
- one more append: a day's descriptions and embeddings (and the two snapshots of it);
- files: published files of the store (descriptions, embeddings, snapshots).
Then both stores are compacted (`compact_store`, grace 0) and the same figures are measured.

    .venv/bin/python bench/store_growth.py                 # 365 days, 8,000 rows
    .venv/bin/python bench/store_growth.py --days 60 --rows 1200 --repeats 3
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from store_engines import growth_args, timed  # the same workload size and timer
from tqdm.auto import tqdm

from prompt_banks import schema, snapshots
from prompt_banks.compaction import compact_store
from prompt_banks.parts import published
from prompt_banks.queries import stats
from prompt_banks.store import BankStore

DOMAIN = "bench"
MODEL = "bench-clip"
DIM = 512
CLASSES = 100


def day_rows(day: int, n: int, rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """One day's description rows (an LLM's, 100 classes round-robin) and their embeddings."""
    descs, embs = [], []
    for i in range(n):
        text = f"Day {day}, row {i}: a photo of something with distinctive feature {rng.random()}."
        cls = f"class {(day * n + i) % CLASSES}"
        params = '{"temperature":0.8}'
        descs.append(
            {
                "row_key": schema.description_row_key(
                    domain=DOMAIN, class_name=cls, source="llm", question=f"q{day}",
                    sample_index=i, llm_model="qwen2.5-7b", llm_params=params,
                ),
                "domain": DOMAIN, "class_name": cls, "raw_class_name": cls, "source": "llm",
                "question": f"q{day}", "sample_index": i, "llm_model": "qwen2.5-7b",
                "llm_params": params, "raw_text": text, "clean_text": text, "status": "ok",
                "error": None,
            }
        )  # fmt: skip
        v = rng.normal(size=DIM).astype(np.float32)
        embs.append(
            {
                "text_hash": schema.text_hash(text), "model_id": MODEL, "dim": DIM,
                "embedding": v / np.linalg.norm(v), "n_tokens": 20, "truncated": False,
            }
        )  # fmt: skip
    return descs, embs


def append_day(store: BankStore, descs: list[dict], embs: list[dict]) -> None:
    store.append_descriptions(descs)
    store.append_embeddings(embs)
    snapshots.take(store, DOMAIN)  # what `bank generate` records
    snapshots.take(store, DOMAIN, MODEL)  # what `bank embed` records


def build(root: Path, days: int, rows: int, grown: bool) -> BankStore:
    store = BankStore(root)
    rng = np.random.default_rng(0)
    per_day = [rows // days + (1 if d < rows % days else 0) for d in range(days)]
    batches = [day_rows(d, n, rng) for d, n in enumerate(per_day)]
    if grown:
        for descs, embs in tqdm(batches, desc="daily appends", unit="day"):
            append_day(store, descs, embs)
    else:
        append_day(store, [r for b in batches for r in b[0]], [r for b in batches for r in b[1]])
    return store


def files(store: BankStore) -> int:
    folders = (store.descriptions_dir, store.embeddings_dir, store.snapshots_dir)
    return sum(len(published(f)[0]) for f in folders)


def measure(stores: dict[str, BankStore], repeats: int, day: int) -> dict[str, dict[str, float]]:
    classes = [f"class {c}" for c in range(CLASSES)]
    figures: dict[str, dict[str, float]] = {}
    for name, store in stores.items():
        rng = np.random.default_rng(day)
        extra = iter([day_rows(day + k, 22, rng) for k in range(repeats)])
        figures[name] = {"files": float(files(store))}  # before this measure's own appends
        figures[name]["bank read (s)"] = timed(
            lambda s=store: snapshots.pinned_bank(s, DOMAIN, classes, MODEL), repeats
        )
        figures[name]["stats (s)"] = timed(lambda s=store: stats(s, DOMAIN), repeats)
        figures[name]["one more append (s)"] = timed(
            lambda s=store, e=extra: append_day(s, *next(e)), repeats
        )
    return figures


def main() -> None:
    args = growth_args(__doc__ or "")
    with tempfile.TemporaryDirectory() as tmp:
        stores = {
            "grown": build(Path(tmp, "grown"), args.days, args.rows, grown=True),
            "single": build(Path(tmp, "single"), args.days, args.rows, grown=False),
        }
        before = measure(stores, args.repeats, day=10_000)
        started = time.perf_counter()
        for store in stores.values():
            compact_store(store, grace_s=0)
        compact_s = time.perf_counter() - started
        after = measure(stores, args.repeats, day=20_000)
    print(f"\n{args.days} daily appends, {args.rows} rows, d={DIM}; median of {args.repeats}")
    print(f"{'figure':<22}{'grown':>10}{'single':>10}{'ratio':>8}   |{'grown':>10}{'single':>10}"
          f"{'ratio':>8}   (before | after compaction)")  # fmt: skip
    for key in before["grown"]:
        row = []
        for fig in (before, after):
            g, s = fig["grown"][key], fig["single"][key]
            row.append(f"{g:>10.4g}{s:>10.4g}{g / s:>7.2f}x")
        print(f"{key:<22}{row[0]}   |{row[1]}")
    print(f"compaction of both stores: {compact_s:.2f} s")


if __name__ == "__main__":
    main()
