"""The Parquet store: atomic publication, idempotence, schema checks, dimension guard, URLs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from prompt_banks import schema
from prompt_banks.errors import UserError
from prompt_banks.store import BankStore, utc_now


def desc_row(
    text: str, *, domain: str = "pets", cls: str = "sphynx", index: int = 0, status: str = "ok"
) -> dict:
    return {
        "row_key": schema.description_row_key(
            domain=domain,
            class_name=cls,
            source="import",
            question=None,
            sample_index=index,
            llm_model=None,
            llm_params=None,
            raw_text=text,
        ),
        "domain": domain,
        "class_name": cls,
        "raw_class_name": cls,
        "source": "import",
        "question": None,
        "sample_index": index,
        "llm_model": None,
        "llm_params": None,
        "raw_text": text,
        "clean_text": text,
        "status": status,
        "error": None,
    }


def emb_row(text: str, model_id: str = "m/1", dim: int = 4, seed: int = 0) -> dict:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return {
        "text_hash": schema.text_hash(text),
        "model_id": model_id,
        "dim": dim,
        "embedding": v / np.linalg.norm(v),
        "n_tokens": 5,
        "truncated": False,
    }


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes: a store 'exactly as it was' compares equal."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def count(store: BankStore, table: str) -> int:
    with store.connect() as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_empty_store_has_empty_views(tmp_path):
    store = BankStore(tmp_path / "banks")
    assert count(store, "descriptions") == 0 and count(store, "embeddings") == 0
    assert store.model_dim("m/1") is None


def test_append_is_idempotent(tmp_path):
    store = BankStore(tmp_path / "banks")
    rows = [desc_row(f"text {i}", index=i) for i in range(5)]
    assert store.append_descriptions(rows) == 5
    before = files_of(tmp_path)
    assert store.append_descriptions(rows) == 0
    assert files_of(tmp_path) == before  # a no-op writes no file
    assert store.append_descriptions([*rows, desc_row("text 5", index=5)]) == 1
    assert count(store, "descriptions") == 6

    embs = [emb_row(f"text {i}", seed=i) for i in range(3)]
    assert store.append_embeddings(embs) == 3
    assert store.append_embeddings(embs) == 0
    assert store.embedded_hashes("m/1") == {schema.text_hash(f"text {i}") for i in range(3)}
    with store.connect() as con:
        stored = con.execute(
            "SELECT embedding FROM embeddings WHERE text_hash = ?", [schema.text_hash("text 1")]
        ).fetchone()[0]
    np.testing.assert_allclose(stored, embs[1]["embedding"], rtol=0, atol=0)


def test_a_raced_duplicate_is_seen_once(tmp_path):
    store = BankStore(tmp_path / "banks")
    row = desc_row("same")
    # Two writers that both found the key missing each publish a file with it.
    for _ in range(2):
        table = pa.Table.from_pylist([{**row, "created_at": utc_now()}], schema=schema.DESCRIPTIONS)
        store._publish(table, store.descriptions_dir)
    assert len(list((tmp_path / "banks/descriptions").glob("*.parquet"))) == 2
    assert count(store, "descriptions") == 1


def test_a_crash_between_temp_write_and_rename_leaves_no_visible_file(tmp_path):
    root = tmp_path / "banks"
    store = BankStore(root)
    store.append_descriptions([desc_row("before")])
    published = sorted((root / "descriptions").glob("*.parquet"))
    # A real process dies (no cleanup, no exception handler) right before the rename.
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store import desc_row
        from prompt_banks.store import BankStore
        os.replace = lambda *a, **k: os._exit(3)
        BankStore({str(root)!r}).append_descriptions([desc_row("after", index=1)])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert len(list((root / "descriptions").glob(".*.tmp"))) == 1  # the orphan temp file
    assert sorted((root / "descriptions").glob("*.parquet")) == published
    with store.connect() as con:
        assert con.execute("SELECT clean_text FROM descriptions").fetchall() == [("before",)]
    assert store.append_descriptions([desc_row("after", index=1)]) == 1  # the retry succeeds
    assert count(store, "descriptions") == 2


def test_a_partial_file_in_flight_is_never_read(tmp_path):
    store = BankStore(tmp_path / "banks")
    store.append_descriptions([desc_row("whole")])
    # What a writer has half-written so far: truncated Parquet under the temp name.
    whole = next((tmp_path / "banks/descriptions").glob("*.parquet")).read_bytes()
    (tmp_path / "banks/descriptions/.part-x.parquet.tmp").write_bytes(whole[: len(whole) // 2])
    assert count(store, "descriptions") == 1


def test_readers_during_appends_see_whole_files_only(tmp_path):
    store = BankStore(tmp_path / "banks")
    batch, n_batches = 7, 8
    errors: list[BaseException] = []

    def write():
        try:
            for b in range(n_batches):
                store.append_descriptions(
                    [desc_row(f"t{b}-{i}", index=b * batch + i) for i in range(batch)]
                )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    seen = []
    while writer.is_alive():
        seen.append(count(BankStore(tmp_path / "banks"), "descriptions"))
    writer.join()
    assert not errors
    assert all(n % batch == 0 for n in seen)  # never a part of a file
    assert seen == sorted(seen)
    assert count(store, "descriptions") == batch * n_batches


def test_schema_is_validated_on_write(tmp_path):
    store = BankStore(tmp_path / "banks")
    bad = desc_row("x")
    del bad["domain"]
    with pytest.raises(UserError, match="descriptions"):
        store.append_descriptions([bad])
    with pytest.raises(UserError, match="status"):
        store.append_descriptions([desc_row("x", status="great")])
    with pytest.raises(UserError, match="source"):
        store.append_descriptions([{**desc_row("x"), "source": "magic"}])
    with pytest.raises(UserError, match="L2-normalised"):
        store.append_embeddings([{**emb_row("x"), "embedding": np.ones(4, np.float32)}])
    with pytest.raises(UserError, match="floats"):
        store.append_embeddings([{**emb_row("x"), "dim": 5}])
    assert not (tmp_path / "banks").exists() or files_of(tmp_path / "banks") == {}


def test_refuses_two_dimensions_under_one_model_id(tmp_path):
    store = BankStore(tmp_path / "banks")
    store.append_embeddings([emb_row("a", dim=4)])
    before = files_of(tmp_path)
    with pytest.raises(UserError, match="dim 4"):
        store.append_embeddings([emb_row("b", dim=8)])
    with pytest.raises(UserError, match="one size"):
        store.append_embeddings(
            [emb_row("c", model_id="m/2", dim=4), emb_row("d", model_id="m/2", dim=8)]
        )
    assert files_of(tmp_path) == before
    assert store.append_embeddings([emb_row("b", model_id="m/2", dim=8)]) == 1  # another id: fine


def test_unwritable_root_is_a_user_error_and_creates_nothing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = BankStore(blocker / "banks")
    with pytest.raises(UserError, match="writable"):
        store.append_descriptions([desc_row("x")])
    assert blocker.read_text() == "not a folder"


def test_fsspec_memory_root():
    root = f"memory://aape-test-{uuid.uuid4().hex}/banks"
    store = BankStore(root)
    assert not store.is_local
    assert store.append_descriptions([desc_row("a"), desc_row("b", index=1)]) == 2
    assert store.append_descriptions([desc_row("a")]) == 0
    assert store.append_embeddings([emb_row("a")]) == 1
    assert store.file_count() == 2
    with store.connect() as con:
        assert con.execute("SELECT count(*) FROM descriptions").fetchone()[0] == 2
    assert store.model_dim("m/1") == 4
