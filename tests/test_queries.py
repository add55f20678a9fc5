"""DuckDB queries against a NumPy brute force over the same store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prompt_banks import schema
from prompt_banks.embed import embed_domain, encode_texts
from prompt_banks.errors import UserError
from prompt_banks.importers import import_file
from prompt_banks.queries import (
    bank_tensor,
    class_texts,
    list_classes,
    list_domains,
    nearest,
    shared_bank_names,
    stats,
)
from prompt_banks.store import BankStore

LONG = "The Abyssinian is a slender cat with a ticked coat and large ears " * 8
BANK = {
    "Abyssinian": [
        "A slender cat.",
        "A ticked coat.",
        "A slender cat.",
        LONG,
        " in terms of lightA ruddy cat.",
        "Large ears.",
        "Almond eyes.",
    ],
    "Bengal": ["Spotted like a leopard.", "A muscular cat."],
    "sphynx": ["A hairless cat.", "Wrinkled skin.", "Big ears.", "Warm to the touch."],
}


def llm_row(cls: str, i: int, status: str, error: str | None, text: str | None) -> dict:
    return {
        "row_key": schema.description_row_key(
            domain="pets",
            class_name=cls,
            source="llm",
            question="Describe a {}",
            sample_index=i,
            llm_model="tiny",
            llm_params="{}",
        ),
        "domain": "pets",
        "class_name": cls,
        "raw_class_name": cls,
        "source": "llm",
        "question": "Describe a {}",
        "sample_index": i,
        "llm_model": "tiny",
        "llm_params": "{}",
        "raw_text": text,
        "clean_text": text,
        "status": status,
        "error": error,
    }


@pytest.fixture(scope="module")
def bank(tiny_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    store = BankStore(root / "banks")
    f = root / "pets.json"
    f.write_text(json.dumps(BANK))
    import_file(store, f, domain="pets")
    store.append_descriptions(
        [
            llm_row("bengal", 0, "failed", "timeout after 30 s", None),
            llm_row("bengal", 1, "failed", "timeout after 30 s", None),
            llm_row("sphynx", 0, "failed", "HTTP 500", None),
            llm_row("sphynx", 1, "ok", None, "Big ears."),  # same text as an imported row
        ]
    )
    (root / "other.json").write_text(json.dumps({"tench": ["A fish."]}))
    import_file(store, root / "other.json", domain="fish")
    embed_domain(store, "pets", tiny_clip, progress=False)
    return store


def brute_force_bank(store, tiny_clip, classes):
    """The expected tensor, built without SQL: texts per class, encoded by the reference path."""
    texts = class_texts(store, "pets")
    n_max = max(len(texts[c]) for c in classes)
    emb = np.zeros((len(classes), n_max, 64), np.float32)
    mask = np.zeros((len(classes), n_max), bool)
    for i, c in enumerate(classes):
        with torch.inference_mode():
            tok = tiny_clip.tokenizer(texts[c])
            e = torch.nn.functional.normalize(tiny_clip.model.encode_text(tok), dim=-1).numpy()
        emb[i, : len(e)] = e
        mask[i, : len(e)] = True
    return emb, mask


def test_lists(bank):
    assert list_domains(bank) == {"fish": 1, "pets": 13}
    assert list_classes(bank, "pets") == {"abyssinian": 6, "bengal": 2, "sphynx": 4}
    assert class_texts(bank, "pets")["abyssinian"][:2] == ["A slender cat.", "A ticked coat."]
    with pytest.raises(UserError, match="domains: fish, pets"):
        list_classes(bank, "cars")


def test_bank_tensor_matches_brute_force(bank, tiny_clip):
    classes = ["sphynx", "Abyssinian", "bengal"]
    emb, mask = bank_tensor(bank, "pets", classes, tiny_clip.model_id)
    want_emb, want_mask = brute_force_bank(bank, tiny_clip, ["sphynx", "abyssinian", "bengal"])
    assert emb.dtype == torch.float32 and mask.dtype == torch.bool
    assert emb.shape == (3, 6, 64) and mask.shape == (3, 6)
    np.testing.assert_array_equal(mask.numpy(), want_mask)
    np.testing.assert_allclose(emb.numpy(), want_emb, atol=1e-5)
    assert emb[~mask].abs().sum() == 0  # padding is zero


def test_bank_tensor_errors(bank, tiny_clip):
    with pytest.raises(UserError, match=r"2 classes have no prompts.*'persian', 'tench'"):
        bank_tensor(bank, "pets", ["sphynx", "persian", "tench"], tiny_clip.model_id)
    with pytest.raises(UserError, match="no embeddings for 'other/model'"):
        bank_tensor(bank, "pets", ["sphynx"], "other/model")
    with pytest.raises(UserError, match="no embedding for"):
        bank_tensor(bank, "fish", ["tench"], tiny_clip.model_id)  # imported, not embedded


def test_classes_that_share_a_bank_name_each_get_its_prompts(bank, tiny_clip):
    # Classes are positions: "Sphynx" twice (two labels, one name) is two rows of one entry.
    classes = ["sphynx", "bengal", "Sphynx"]
    emb, mask = bank_tensor(bank, "pets", classes, tiny_clip.model_id)
    assert emb.shape[0] == 3 and torch.equal(emb[0], emb[2]) and torch.equal(mask[0], mask[2])
    single, single_mask = bank_tensor(bank, "pets", ["sphynx"], tiny_clip.model_id)
    k = int(single_mask.sum())
    assert int(mask[0].sum()) == k and torch.equal(emb[0, :k], single[0, :k])
    assert shared_bank_names(classes) == {"sphynx": [0, 2]}
    assert shared_bank_names(["Cardigan", "cardigan", "crane", "crane", "tench"]) == {
        "cardigan": [0, 1],
        "crane": [2, 3],
    }
    assert shared_bank_names(["cat", "dog"]) == {}


@pytest.mark.parametrize("k", [1, 3, 10])
def test_nearest_matches_brute_force(bank, tiny_clip, k):
    query = encode_texts(tiny_clip, ["a cat with big ears"]).embeddings[0].numpy()
    got = nearest(bank, "pets", "Abyssinian", query, tiny_clip.model_id, k=k)
    texts = class_texts(bank, "pets")["abyssinian"]
    e = encode_texts(tiny_clip, texts).embeddings.numpy()
    cos = e @ query / (np.linalg.norm(e, axis=1) * np.linalg.norm(query))
    order = np.argsort(-cos)[:k]
    assert [h["text"] for h in got] == [texts[i] for i in order]
    np.testing.assert_allclose([h["score"] for h in got], cos[order], atol=1e-5)


def test_nearest_errors(bank, tiny_clip):
    q = np.ones(64, np.float32)
    with pytest.raises(UserError, match="'persian' is not in domain 'pets'"):
        nearest(bank, "pets", "persian", q, tiny_clip.model_id)
    with pytest.raises(UserError, match="32 floats"):
        nearest(bank, "pets", "sphynx", q[:32], tiny_clip.model_id)


def test_stats(bank, tiny_clip):
    s = stats(bank, "pets")
    json.dumps(s)  # JSON-able
    assert s["status"] == {"ok": 13, "dropped": 2, "failed": 3}
    assert s["sources"] == {"import": 14, "llm": 4}
    assert s["classes"] == 3 and s["texts"] == 12
    assert s["per_class"]["bengal"] == {"ok": 2, "dropped": 0, "failed": 2}
    assert s["per_class_ok"] == {"min": 2, "median": 5, "max": 6, "classes_without_ok": []}
    # One exact duplicate dropped at import; "Big ears." stored ok twice (import + llm).
    assert s["duplicates"] == {"dropped": 1, "ok_repeated": 1}
    assert s["dropped_by_reason"] == {"duplicate": 1, "fragment": 1}
    assert s["failed_by_error"] == {"timeout after 30 s": 2, "HTTP 500": 1}
    e = s["embeddings"][tiny_clip.model_id]
    assert (e["embedded"], e["missing"], e["truncated"], e["dim"]) == (12, 0, 1, 64)
    assert e["truncated_share"] == pytest.approx(1 / 12, abs=1e-6) and e["max_tokens"] > 77
