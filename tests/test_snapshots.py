"""Bank snapshots: content ids, pinned reads after growth and compaction, history, diff, lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fake_images import image_folder
from test_store import desc_row, emb_row

from aape.cli.main import main
from aape.train import load_checkpoint
from prompt_banks import snapshots
from prompt_banks.compaction import compact_store
from prompt_banks.errors import UserError
from prompt_banks.parts import live_parts
from prompt_banks.queries import bank_tensor, stats
from prompt_banks.store import BankStore

CLASSES = ["c0", "c1", "c2"]


def llm_row(text: str, cls: str, index: int, model: str = "qwen-7b") -> dict:
    row = desc_row(text, cls=cls, index=index)
    return {**row, "source": "llm", "llm_model": model, "llm_params": '{"temperature":0.8}'}


def grow(store: BankStore, tag: str, n: int, model: str = "qwen-7b", classes: int = 3) -> None:
    """One "regeneration": n new description rows and their embeddings."""
    rows = [llm_row(f"{tag} text {i}", f"c{i % classes}", i, model) for i in range(n)]
    for r in rows:
        r["row_key"] = f"{tag}-{r['row_key']}"
    store.append_descriptions(rows)
    store.append_embeddings(
        [emb_row(f"{tag} text {i}", seed=sum(map(ord, tag)) * 100 + i) for i in range(n)]
    )


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path) -> BankStore:
    if request.param == "local":
        return BankStore(tmp_path / "banks")
    import uuid

    return BankStore(f"memory://snap-{uuid.uuid4().hex[:8]}/banks")


def test_ids_are_content_and_recorded_once(store: BankStore) -> None:
    grow(store, "a", 6)
    first = snapshots.take(store, "pets", "m/1")
    again = snapshots.take(store, "pets", "m/1")
    assert again.id == first.id and again.registered_at == first.registered_at
    assert len(live_parts(store.snapshots_dir)[0]) == 1  # recorded once
    assert first.summary["rows"] == 6 and first.summary["classes"] == 3
    assert first.summary["embedded"] == 6
    assert first.summary["llm"] == [
        {"source": "llm", "llm_model": "qwen-7b", "llm_params": '{"temperature":0.8}', "rows": 6}
    ]
    # descriptions-only and per-model snapshots differ, and share the descriptions digest
    only = snapshots.take(store, "pets")
    assert only.id != first.id and only.descriptions_hash == first.descriptions_hash
    grow(store, "b", 3)
    assert snapshots.current(store, "pets", "m/1").id != first.id


def test_pinned_read_is_exact_after_growth_and_compaction(store: BankStore) -> None:
    grow(store, "a", 6)
    snap = snapshots.take(store, "pets", "m/1")
    before = bank_tensor(store.at(snap), "pets", CLASSES, "m/1")
    stats_before = stats(store.at(snap), "pets")
    for tag in ("b", "c", "d"):
        grow(store, tag, 5, classes=4)
    assert bank_tensor(store, "pets", CLASSES, "m/1")[0].shape != before[0].shape
    compact_store(store, grace_s=0)
    assert store.file_count() == 2
    resolved = snapshots.resolve(store, snap.id, "pets", "m/1")
    after = bank_tensor(store.at(resolved), "pets", CLASSES, "m/1")
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert stats(store.at(resolved), "pets") == stats_before
    # a prefix of the id works too
    assert snapshots.load(store, snap.id[:8]).id == snap.id


def test_descriptions_only_snapshot_pins_rows_and_takes_embeddings_as_stored(store) -> None:
    grow(store, "a", 4)
    only = snapshots.take(store, "pets")
    grow(store, "b", 4)
    full = snapshots.resolve(store, only.id, "pets", "m/1")
    assert full.model_id == "m/1" and full.descriptions_hash == only.descriptions_hash
    assert full.summary["rows"] == 4 and full.summary["embedded"] == 4
    assert snapshots.load(store, full.id).id == full.id  # recorded


def test_history_and_diff_of_three_regenerations(store: BankStore) -> None:
    ids = []
    for tag, n, model in (("a", 6, "qwen-7b"), ("b", 4, "llama-8b"), ("c", 8, "qwen-7b")):
        grow(store, tag, n, model, classes=3 if tag != "c" else 4)
        snapshots.take(store, "pets")
        ids.append(snapshots.take(store, "pets", "m/1").id)
    hist = snapshots.history(store, "pets")
    assert [h["rows"] for h in hist] == [6, 10, 18]
    assert [h["rows_added"] for h in hist] == [6, 4, 8]
    assert [h["classes_added"] for h in hist] == [3, 0, 1]
    assert [h["snapshots"]["m/1"] for h in hist] == ids
    assert [g["llm_model"] for g in hist[1]["added_by"]] == ["llama-8b"]
    assert hist[2]["added_by"][0]["rows"] == 8
    d = snapshots.diff(store, "pets", ids[0], ids[2])
    assert d["classes_added"] == ["c3"] and d["classes_removed"] == []
    assert d["rows_added"] == 12 and d["rows_removed"] == 0
    assert {g["llm_model"]: g["rows"] for g in d["rows_added_by"]} == {"llama-8b": 4, "qwen-7b": 8}
    back = snapshots.diff(store, "pets", ids[2], ids[0])
    assert back["classes_removed"] == ["c3"] and back["rows_removed"] == 12


def test_bad_snapshot_ids_and_a_lost_part(tmp_path: Path) -> None:
    store = BankStore(tmp_path / "banks")
    grow(store, "a", 3)
    snap = snapshots.take(store, "pets", "m/1")
    with pytest.raises(UserError, match="too short"):
        snapshots.load(store, "abc")
    with pytest.raises(UserError, match="no snapshot 'ffffffffff'"):
        snapshots.load(store, "ffffffffff")
    with pytest.raises(UserError, match="is of domain 'pets', not --bank-domain 'cars'"):
        snapshots.resolve(store, snap.id, "cars", "m/1")
    with pytest.raises(UserError, match="holds embeddings of 'm/1', not of 'm/2'"):
        snapshots.resolve(store, snap.id, "pets", "m/2")
    with pytest.raises(UserError, match="'cars' has no prompts in the store"):
        snapshots.take(store, "cars")
    with pytest.raises(UserError, match="read-only"):
        store.at(snap).append_descriptions([desc_row("x")])
    # a part the snapshot was read from disappears (deleted by hand): refused, not misread
    Path(live_parts(store.descriptions_dir)[0][0].path).unlink()
    grow(store, "b", 3)
    with pytest.raises(UserError, match="parts it was read from are gone"):
        snapshots.resolve(store, snap.id, "pets", "m/1")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _bank_file(path: Path, texts_per_class: int, tag: str) -> Path:
    path.write_text(
        json.dumps({c: [f"{tag} {c} text {i}." for i in range(texts_per_class)] for c in CLASSES})
    )
    return path


@pytest.mark.slow
def test_train_on_a_snapshot_after_growth_is_bit_for_bit(capsys, tmp_path, home) -> None:
    data = image_folder(tmp_path / "data", CLASSES, {"train": 2, "val": 1, "test": 2})
    common = ["--home", home]
    clip = ["--clip-model", "aape-tiny"]
    _cli(capsys, "bank", "import", _bank_file(tmp_path / "v1.json", 2, "v1"), "--domain", "toy",
         *common)  # fmt: skip
    _cli(capsys, "bank", "embed", "--domain", "toy", "--quiet", *clip, *common)
    train = ["train", "--dataset", "folder", "--data-root", data, "--bank-domain", "toy",
             "--shots", "1", "--set", "epochs=2", "--quiet", *clip, *common]  # fmt: skip
    assert _cli(capsys, *train, "--out", tmp_path / "run1")[0] == 0
    first = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    snap = first["lineage"]["bank"]["snapshot"]
    # the bank grows twice (new LLM rows, new texts), and the stores are compacted
    for tag in ("v2", "v3"):
        _cli(capsys, "bank", "import", _bank_file(tmp_path / f"{tag}.json", 3, tag), "--domain",
             "toy", *common)  # fmt: skip
        _cli(capsys, "bank", "embed", "--domain", "toy", "--quiet", *clip, *common)
    code, out, _ = _cli(capsys, "bank", "history", "--domain", "toy", *common)
    assert code == 0 and len(out.strip().splitlines()) == 6  # 3 states, one source line each
    assert _cli(capsys, "bank", "compact", "--features", "--grace", "0", *common)[0] == 0
    assert _cli(capsys, *train, "--out", tmp_path / "run3")[0] == 0
    grown = json.loads((tmp_path / "run3" / "metrics.json").read_text())
    assert grown["lineage"]["bank"]["snapshot"] != snap
    assert grown["lineage"]["bank"]["rows"] == 3 * 2 + 2 * 3 * 3
    # pinned to the first snapshot: the same rows, the same weights and predictions
    assert _cli(capsys, *train, "--bank-snapshot", snap, "--out", tmp_path / "run2")[0] == 0
    pinned = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    assert pinned["lineage"]["bank"] == first["lineage"]["bank"]
    assert pinned["lineage"]["features"] == first["lineage"]["features"]
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        assert pinned[key] == first[key]
    w1 = load_checkpoint(tmp_path / "run1").model.inference_state()
    w2 = load_checkpoint(tmp_path / "run2").model.inference_state()
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    # the artifact names its snapshot, LLM, CLIP, features, manifest and code
    art = tmp_path / "art"
    assert _cli(capsys, "export", "--run", tmp_path / "run2", "--out", art, *common)[0] == 0
    lineage = json.loads((art / "config.json").read_text())["lineage"]
    assert lineage["bank"]["snapshot"] == snap and lineage["clip_model_id"].startswith("aape-tiny")
    assert lineage["bank"]["clip_model_id"] == lineage["clip_model_id"]
    assert lineage["bank"]["llm"] == [
        {"source": "import", "llm_model": None, "llm_params": None, "rows": 6}
    ]
    assert lineage["features"]["train"]["rows"] == 3 * 17  # 1 shot x (centre + 16 views)
    assert len(lineage["fewshot_manifest"]["fingerprint"]) == 32
    assert lineage["code"]["package"] == "aape" and lineage["code"]["version"]
    code, out, _ = _cli(capsys, "bank", "diff", "--domain", "toy", snap,
                        grown["lineage"]["bank"]["snapshot"], "--json", *common)  # fmt: skip
    assert code == 0 and json.loads(out)["rows_added"] == 18


def test_cli_errors_are_one_line(capsys, home, tmp_path) -> None:
    _cli(capsys, "bank", "import", _bank_file(tmp_path / "v1.json", 2, "v1"), "--domain", "toy",
         "--home", home)  # fmt: skip
    code, out, err = _cli(capsys, "bank", "diff", "--domain", "toy", "0123456789", "abcdefabcd",
                          "--home", home)  # fmt: skip
    assert code == 2 and err.strip().count("\n") == 0
    assert "error: --bank-snapshot: no snapshot '0123456789'" in err
    code, _, err = _cli(capsys, "bank", "history", "--domain", "nope", "--home", home)
    assert code == 2 and "error: --domain: 'nope' is not in the store" in err
    code, out, _ = _cli(capsys, "bank", "history", "--domain", "toy", "--home", home, "--json")
    assert code == 0 and json.loads(out)[0]["rows"] == 6
    code, _, err = _cli(capsys, "bank", "compact", "--grace", "-1", "--home", home)
    assert code == 2 and "error: --grace: -1.0 must be 0 or more seconds" in err


@pytest.mark.slow
def test_eval_reuses_runs_of_an_unchanged_bank_and_adds_runs_for_a_changed_one(
    capsys, tmp_path, home
) -> None:
    data = image_folder(tmp_path / "data", CLASSES, {"train": 2, "val": 1, "test": 2})
    common = ["--home", home]
    clip = ["--clip-model", "aape-tiny"]

    def bank(tag: str, n: int) -> None:
        _cli(capsys, "bank", "import", _bank_file(tmp_path / f"{tag}.json", n, tag), "--domain",
             "toy", *common)  # fmt: skip
        _cli(capsys, "bank", "embed", "--domain", "toy", "--quiet", *clip, *common)

    def evaluate() -> list[Path]:
        argv = ["eval", "--dataset", "folder", "--data-root", data, "--bank-domain", "toy",
                "--shots", "1", "--seeds", "1", "--baselines", "", "--set", "method=cupl",
                "--quiet", *clip, *common]  # fmt: skip
        assert _cli(capsys, *argv)[0] == 0
        return sorted((home / "runs" / "few-shot").glob("*/*/k1-s1/result.json"))

    bank("v1", 2)
    (first,) = evaluate()
    assert evaluate() == [first]  # the same bank: the run is reused, not trained again
    bank("v2", 2)
    runs = evaluate()
    assert len(runs) == 2 and first in runs  # a new run beside the old
    records = [json.loads(p.read_text()) for p in runs]
    assert len({r["lineage"]["bank"]["snapshot"] for r in records}) == 2
