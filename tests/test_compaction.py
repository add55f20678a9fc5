"""Compaction: kill -9 at several points, readers and writers during a merge, snapshots after it,
the grace before old parts go, and the feature cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from test_store import desc_row, emb_row

from aape.cache_compaction import compact_features
from aape.features import FEATURES, load_features, write_feature_rows
from prompt_banks import snapshots
from prompt_banks.compaction import compact_folder, compact_store
from prompt_banks.errors import UserError
from prompt_banks.parts import live_parts, published
from prompt_banks.queries import bank_tensor
from prompt_banks.schema import DESCRIPTIONS
from prompt_banks.store import BankStore

ROOT = Path(__file__).resolve().parents[1]


def daily(store: BankStore, days: int, per_day: int = 4, start: int = 0) -> None:
    """`days` appends, one descriptions part and one embeddings part each."""
    for d in range(start, start + days):
        texts = [f"day {d} text {i}" for i in range(per_day)]
        store.append_descriptions(
            [desc_row(t, cls=f"c{i % 3}", index=d * 100 + i) for i, t in enumerate(texts)]
        )
        store.append_embeddings([emb_row(t, seed=d * 100 + i) for i, t in enumerate(texts)])


def rows_seen(store: BankStore) -> tuple[list[tuple], int]:
    """(sorted (key, created_at) of every stored description row, count of rows read)."""
    with store.connect() as con:
        rows = con.execute("SELECT row_key, created_at FROM descriptions_all").fetchall()
    return sorted(rows), len(rows)


_KILLED_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from prompt_banks.compaction import compact_store
    from prompt_banks.store import BankStore

    stop_at = sys.argv[2]

    def stage(name, detail):
        print(name, detail, flush=True)
        if name == stop_at:
            time.sleep(60)  # the test kills us here

    compact_store(BankStore(sys.argv[1]), grace_s=0, on_stage=stage)
    print("done", flush=True)
    """
)


def _compact_until_killed(root: Path, stage: str) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SCRIPT, str(root), stage],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line.split()[0])
        if seen[-1] == stage:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, seen
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["merge", "published", "delete"])
def test_kill_9_during_compaction_loses_and_duplicates_nothing(tmp_path, stage) -> None:
    store = BankStore(tmp_path / "banks")
    daily(store, 12)
    snap = snapshots.take(store, "pets", "m/1")
    expected, n = rows_seen(store)
    bank = bank_tensor(store, "pets", ["c0", "c1", "c2"], "m/1")
    seen = _compact_until_killed(store.root, stage)
    assert seen[-1] == stage
    # whatever the point, readers see every row once, and the snapshot reads back exactly
    assert rows_seen(store) == (expected, n)
    pinned = bank_tensor(store.at(snapshots.resolve(store, snap.id, "pets", "m/1")),
                         "pets", ["c0", "c1", "c2"], "m/1")  # fmt: skip
    assert torch.equal(pinned[0], bank[0]) and torch.equal(pinned[1], bank[1])
    # the next compaction (the killed one's lock is stale) finishes the job and cleans up
    compact_store(store, grace_s=0)
    assert rows_seen(store) == (expected, n)
    assert store.file_count() == 2
    for folder in (store.descriptions_dir, store.embeddings_dir):
        assert len(published(folder)[0]) == 1  # no input left behind
        assert not list(Path(folder).glob(".*.tmp"))


@pytest.mark.slow
def test_readers_and_writers_during_compaction(tmp_path) -> None:
    store = BankStore(tmp_path / "banks")
    daily(store, 20)
    before, _ = rows_seen(store)
    errors: list[BaseException] = []
    counts: list[int] = []
    done = threading.Event()

    def reader() -> None:
        try:
            while not done.is_set():
                rows, n = rows_seen(store)
                assert len(set(rows)) == n, "a row read twice"
                assert set(before) <= set(rows), "a row lost"
                counts.append(n)
        except BaseException as exc:
            errors.append(exc)

    def writer() -> None:
        try:
            daily(store, 10, start=100)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for _ in range(4):
        compact_store(store)  # default grace: readers that listed before may still open inputs
    threads[1].join()
    compact_store(store)
    done.set()
    threads[0].join()
    assert not errors, errors
    assert counts == sorted(counts) and len(counts) > 2  # never a row less than a read before
    final, n = rows_seen(store)
    assert n == len(set(final)) == (20 + 10) * 4
    # past the grace, old parts go; the rows stay
    compact_store(store, grace_s=0)
    assert rows_seen(store) == (final, n) and store.file_count() == 2


def test_old_parts_wait_for_the_grace_and_merges_nest(tmp_path) -> None:
    store = BankStore(tmp_path / "banks")
    daily(store, 3)
    snap = snapshots.take(store, "pets", "m/1")
    folder = store.descriptions_dir
    first = compact_folder(folder, DESCRIPTIONS, what="store", grace_s=0.3)
    assert first.merged == 3 and first.pending == 3 and len(published(folder)[0]) == 4
    assert len(live_parts(folder)[0]) == 1
    daily(store, 2, start=10)
    time.sleep(0.35)
    second = compact_folder(folder, DESCRIPTIONS, what="store", grace_s=0.3)
    assert second.deleted == 3 and second.merged == 3  # the merged part + two new parts
    (merged,) = live_parts(folder)[0]
    assert len(merged.origins) == 5 and len(merged.replaces) == 6
    assert sum(n for _, n in merged.origins) == 5 * 4
    resolved = snapshots.resolve(store, snap.id, "pets", "m/1")
    assert resolved.summary["rows"] == 12
    assert compact_folder(folder, DESCRIPTIONS, what="store", grace_s=0).merged == 0


def test_a_live_lock_is_refused_and_a_dead_one_taken_over(tmp_path) -> None:
    store = BankStore(tmp_path / "banks")
    daily(store, 2)
    lock = Path(store.descriptions_dir) / "_compaction.lock"
    lock.write_text(
        f'{{"pid": {os.getpid()}, "host": "{os.uname().nodename}", "at": {time.time()}}}'
    )
    with pytest.raises(UserError, match="is held by another compaction"):
        compact_store(store, grace_s=0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    lock.write_text(f'{{"pid": {dead}, "host": "{os.uname().nodename}", "at": {time.time()}}}')
    assert compact_store(store, grace_s=0)[0].merged == 2 and not lock.exists()


def test_memory_store_compacts_and_keeps_snapshots() -> None:
    store = BankStore(f"memory://compact-{uuid.uuid4().hex[:8]}/banks")
    daily(store, 5)
    snap = snapshots.take(store, "pets", "m/1")
    expected = rows_seen(store)
    daily(store, 2, start=50)
    reports = compact_store(store, grace_s=0)
    assert [r.files_after for r in reports] == [1, 1, 1]
    assert store.file_count() == 2
    assert snapshots.resolve(store, snap.id, "pets", "m/1").summary["rows"] == 20
    assert rows_seen(store.at(snap))[0] == expected[0]


def _feature_table(ids: list[str], view: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(ids), 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n = len(ids)
    return pa.table(
        {
            "id": ids,
            "dataset": ["toy"] * n,
            "split": ["train"] * n,
            "label": list(range(n)),
            "view": [view] * n,
            "model_id": ["m/1"] * n,
            "dim": [4] * n,
            "embedding": list(x),
            "created_at": [datetime.now(UTC)] * n,
        },
        schema=FEATURES,
    )


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_feature_cache_compaction_keeps_every_row(tmp_path, kind) -> None:
    home = tmp_path / "home" if kind == "local" else f"memory://feat-{uuid.uuid4().hex[:8]}/home"
    ids = [f"img{i}" for i in range(6)]
    for view in range(4):
        write_feature_rows(home, _feature_table(ids, view, seed=view))
    before = load_features(home, "m/1", "toy", "train")
    (report,) = compact_features(home, grace_s=0)
    assert report.merged == 4 and report.files_after == 1 and report.deleted == 4
    after = load_features(home, "m/1", "toy", "train")
    assert torch.equal(before.x, after.x) and torch.equal(before.view, after.view)
    assert before.image_ids == after.image_ids
