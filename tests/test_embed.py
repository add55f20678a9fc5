"""CLIP text embedding: the fast path equals encode_text; a bank is embedded once per model."""

from __future__ import annotations

import json
import uuid

import open_clip
import pytest
import torch
import torch.nn.functional as F
from test_store import emb_row, files_of

from prompt_banks import schema
from prompt_banks.clip import CLIPRef, LoadedCLIP, register_project_models
from prompt_banks.embed import (
    _is_standard_text_tower,
    _use_fast_path,
    embed_domain,
    embed_texts_to_rows,
    encode_texts,
    template_text,
)
from prompt_banks.errors import UserError
from prompt_banks.importers import import_file
from prompt_banks.store import BankStore

TEXTS = [
    "a photo of a cat.",
    "A Sphynx is a hairless cat with wrinkled skin and large ears.",
    "x",
    "The McLaren MP4-12C Coupe 2012 is a sports car " * 12,  # over the 77-token context
    "a photo of a cat.",  # duplicate
    "",
    "Dogs: loyal, playful; they bark (loudly)!",
] + [f"a photo of a {w} in the {p}." for w in ("bird", "tree", "car") for p in ("sun", "rain")]


def reference(clip: LoadedCLIP, texts: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        return F.normalize(clip.model.encode_text(clip.tokenizer(texts)).float(), dim=-1)


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_fast_path_equals_encode_text(tiny_clip, batch_size):
    assert _is_standard_text_tower(tiny_clip) and _use_fast_path(tiny_clip)
    enc = encode_texts(tiny_clip, TEXTS, batch_size=batch_size)
    assert enc.embeddings.dtype == torch.float32 and enc.embeddings.shape == (len(TEXTS), 64)
    assert (enc.embeddings - reference(tiny_clip, TEXTS)).abs().max() < 1e-5
    assert torch.allclose(enc.embeddings.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)


def test_token_counts_and_truncation(tiny_clip):
    enc = encode_texts(tiny_clip, TEXTS)
    expected = [len(tiny_clip.tokenizer.encode(t)) + 2 for t in TEXTS]
    assert enc.n_tokens == expected
    assert enc.truncated == [n > 77 for n in expected]
    assert enc.truncated[3] and not any(enc.truncated[:3])


def _tiny_variant(tmp_path, **text_cfg) -> LoadedCLIP:
    """aape-tiny with another text pooling, registered under a fresh name."""
    register_project_models()
    cfg = json.loads(json.dumps(open_clip.get_model_config("aape-tiny")))
    cfg["text_cfg"].update(text_cfg)
    name = f"aape-tiny-{uuid.uuid4().hex[:6]}"
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model, _, val = open_clip.create_model_and_transforms(name)
    model.eval()
    return LoadedCLIP(
        ref=CLIPRef(name),
        model=model,
        tokenizer=open_clip.get_tokenizer(name),
        preprocess_train=val,
        preprocess_val=val,
        dim=64,
        context_length=77,
        untrained=True,
        device=torch.device("cpu"),
    )


@pytest.mark.parametrize(
    "text_cfg", [{"pool_type": "last"}, {"pool_type": "first", "no_causal_mask": True}]
)
def test_other_text_poolings_fall_back_to_encode_text(tmp_path, text_cfg):
    clip = _tiny_variant(tmp_path, **text_cfg)
    assert not _is_standard_text_tower(clip)
    texts = TEXTS[:4]
    enc = encode_texts(clip, texts, batch_size=2)
    assert (enc.embeddings - reference(clip, texts)).abs().max() < 1e-5


def test_template_text():
    assert template_text("sphynx") == "a photo of a sphynx."


def test_embed_texts_to_rows_dedups_and_fits_the_store(tiny_clip, tmp_path):
    rows = embed_texts_to_rows(tiny_clip, ["b", "a", "b"])
    assert [r["text_hash"] for r in rows] == [schema.text_hash("b"), schema.text_hash("a")]
    assert {r["model_id"] for r in rows} == {"aape-tiny/random-seed0"}
    store = BankStore(tmp_path / "banks")
    # Two shards written by two workers, overlapping on "b".
    assert store.append_embeddings(rows) == 2
    assert store.append_embeddings(embed_texts_to_rows(tiny_clip, ["b", "c"])) == 1


def test_embed_domain_encodes_each_text_once(tiny_clip, tmp_path):
    store = BankStore(tmp_path / "banks")
    f = tmp_path / "b.json"
    f.write_text(
        json.dumps(
            {
                "Sphynx": ["A hairless cat.", "A hairless cat.", "Pink skin."],
                "bengal": ["Spotted coat.", "A hairless cat."],
            }
        )
    )
    import_file(store, f, domain="pets")
    first = embed_domain(store, "pets", tiny_clip, progress=False)
    # 3 distinct descriptions + one template per class.
    assert (first.texts, first.encoded, first.already) == (5, 5, 0)
    expected = [
        "A hairless cat.",
        "Pink skin.",
        "Spotted coat.",
        template_text("sphynx"),
        template_text("bengal"),
    ]
    assert store.embedded_hashes(tiny_clip.model_id) == {schema.text_hash(t) for t in expected}
    with store.connect() as con:
        got = dict(con.execute("SELECT text_hash, embedding FROM embeddings").fetchall())
    ref = reference(tiny_clip, expected)
    for i, t in enumerate(expected):
        assert (torch.tensor(got[schema.text_hash(t)]) - ref[i]).abs().max() < 1e-5
    before = files_of(tmp_path / "banks")
    second = embed_domain(store, "pets", tiny_clip, progress=False)
    assert (second.encoded, second.already) == (0, 5)
    assert files_of(tmp_path / "banks") == before
    # A new description: only it is encoded.
    f.write_text(json.dumps({"Sphynx": ["Wrinkles."]}))
    import_file(store, f, domain="pets")
    assert embed_domain(store, "pets", tiny_clip, progress=False).encoded == 1


def test_embed_refuses_another_dimension_before_any_work(tiny_clip, tmp_path):
    store = BankStore(tmp_path / "banks")
    f = tmp_path / "b.json"
    f.write_text(json.dumps({"cat": ["A cat."]}))
    import_file(store, f, domain="pets")
    store.append_embeddings([emb_row("other", model_id=tiny_clip.model_id, dim=4)])
    before = files_of(tmp_path / "banks")
    with pytest.raises(UserError, match="dim 4"):
        embed_domain(store, "pets", tiny_clip, progress=False)
    assert files_of(tmp_path / "banks") == before


def test_embed_unknown_domain(tiny_clip, tmp_path):
    with pytest.raises(UserError, match="'nope'"):
        embed_domain(BankStore(tmp_path / "banks"), "nope", tiny_clip, progress=False)
