"""Loading CLIP: the tiny random architecture, local weight files, and the errors users get."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from prompt_banks.clip import CLIPRef, load_clip
from prompt_banks.embed import encode_texts
from prompt_banks.errors import UserError

TEXTS = ["a photo of a cat.", "A Sphynx is a hairless cat."]


def test_aape_tiny_is_small_and_says_it_is_untrained(caplog):
    with caplog.at_level(logging.WARNING, logger="prompt_banks.clip"):
        clip = load_clip(CLIPRef("aape-tiny"), device="cpu")
    assert clip.dim == 64 and clip.context_length == 77 and clip.untrained
    assert clip.model_id == "aape-tiny/random-seed0"
    assert "RANDOM, UNTRAINED" in caplog.text
    assert not any(p.requires_grad for p in clip.model.parameters())


def test_random_weights_are_the_same_in_every_load(tiny_clip):
    again = load_clip(CLIPRef("aape-tiny"), device="cpu")
    assert torch.equal(
        encode_texts(tiny_clip, TEXTS).embeddings, encode_texts(again, TEXTS).embeddings
    )


def test_local_weights_file_reloads_identically_with_another_model_id(tiny_clip, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    loaded = load_clip(CLIPRef("aape-tiny", pretrained=str(path)), device="cpu")
    assert not loaded.untrained
    assert loaded.model_id.startswith("aape-tiny/file-") and loaded.model_id != tiny_clip.model_id
    assert torch.equal(
        encode_texts(loaded, TEXTS).embeddings, encode_texts(tiny_clip, TEXTS).embeddings
    )


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (CLIPRef("ViT-Nope-99"), "is not an open_clip architecture"),
        (CLIPRef("ViT-B-16", pretrained="no-such-tag"), "is not a tag of ViT-B-16"),
        (CLIPRef("ViT-B-16"), "needs weights"),
        (CLIPRef("aape-tiny", pretrained="/no/such/weights.pt"), "does not exist"),
        (CLIPRef("local-dir:/no/such/folder"), "/no/such/folder"),
    ],
)
def test_bad_clip_refs_are_user_errors(ref, message):
    with pytest.raises(UserError, match=message):
        load_clip(ref, device="cpu")


@pytest.mark.slow
def test_a_real_tag_offline_fails_fast_with_a_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(UserError, match=r"clip pretrained: could not load .*'openai'"):
        load_clip(CLIPRef("ViT-B-16", pretrained="openai"), device="cpu")
    # No network wait: the time is building ViT-B/16 before open_clip looks for the file.
    assert time.monotonic() - started < 120
