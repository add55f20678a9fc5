"""Retrieval AAPE's parts: the contrastive loss, the aggregator over an image's captions,
training (determinism, resume, baselines), recall against CLIP_benchmark's own evaluation,
and the simulated caption world."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from aape.model import PromptAggregator
from aape.vl.config import RetrievalConfig
from aape.vl.evaluate import evaluate_split, recall_at_k
from aape.vl.losses import contrastive_loss
from aape.vl.simulation import simulate_captions, small_world
from aape.vl.train import heldout_positions, train_retrieval

FAST = {"adamw_epochs": 4, "batch_size": 32, "aggregator_heads": 4, "warmup_epochs": 0}


@pytest.fixture(scope="module")
def world():
    return simulate_captions("coco", small_world(), seed=0)


def test_contrastive_loss_is_clip_cross_entropy_with_one_text_per_image() -> None:
    logits = torch.randn(6, 6)
    own = torch.arange(6)
    expected = (F.cross_entropy(logits, own) + F.cross_entropy(logits.T, own)) / 2
    assert torch.allclose(contrastive_loss(logits, own), expected)
    assert torch.allclose(contrastive_loss(logits, own, "i2t"), F.cross_entropy(logits, own))
    assert torch.allclose(contrastive_loss(logits, own, "t2i"), F.cross_entropy(logits.T, own))


def test_contrastive_loss_with_several_captions_per_image() -> None:
    logits = torch.randn(3, 7)
    owner = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    i2t = contrastive_loss(logits, owner, "i2t")
    mass = torch.stack([logits.softmax(1)[i, owner == i].sum() for i in range(3)])
    assert torch.allclose(i2t, -mass.log().mean())
    assert torch.allclose(contrastive_loss(logits, owner, "t2i"), F.cross_entropy(logits.T, owner))


def test_caption_aggregator_has_no_per_image_parameters_and_stays_in_their_span() -> None:
    cfg = RetrievalConfig(aggregator_heads=4)
    d, n = 32, 5
    bank = F.normalize(torch.randn(10, n, d), dim=-1)
    mask = torch.ones(10, n, dtype=torch.bool)
    mask[3, 3:] = False
    agg = PromptAggregator(cfg, bank, mask, per_class_query=False)
    assert agg.query is None  # nothing grows with the number of training images
    x = F.normalize(torch.randn(4, d), dim=-1)
    rows = torch.tensor([0, 3, 7, 3])
    p_a = agg(x, bank, mask, rows)
    for i, r in enumerate(rows.tolist()):
        basis = bank[r][mask[r]]  # p_a is a (normalised) combination of the image's captions
        coef = torch.linalg.lstsq(basis.T, p_a[i]).solution
        assert torch.allclose(basis.T @ coef, p_a[i], atol=1e-4)
    same = F.normalize(torch.randn(1, 1, d), dim=-1).expand(2, n, d)
    one = agg(x[:2], same, torch.ones(2, n, dtype=torch.bool), torch.tensor([0, 1]))
    assert torch.allclose(one, same[:, 0], atol=1e-5)
    # Unseen caption sets (held-out images): scored against every set at once.
    scores = agg.teacher_scores(x, bank, mask)
    assert scores.shape == (4, 10)
    assert torch.allclose(scores[torch.arange(4), rows], (x * p_a).sum(-1), atol=1e-5)


@pytest.mark.slow
def test_training_is_deterministic_and_resumes_exactly(world, tmp_path: Path) -> None:
    cfg = RetrievalConfig(**FAST)
    kw = {"model_id": "sim", "dataset": "sim-coco", "progress": False}
    a = train_retrieval(world["train"], cfg, **kw)
    b = train_retrieval(world["train"], cfg, **kw)
    for (k, va), vb in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), k
    assert a.epochs_done == 4 and len(a.history) == 4
    assert set(a.health) == {"teacher_acc", "student_acc", "zeroshot_acc", "n_heldout"}
    assert a.health["n_heldout"] == 40
    part = train_retrieval(world["train"], cfg, checkpoint_dir=tmp_path, until_epoch=2, **kw)
    assert part.epochs_done == 2
    resumed = train_retrieval(world["train"], cfg, checkpoint_dir=tmp_path, **kw)
    assert resumed.epochs_done == 4 and resumed.history == a.history
    for va, vb in zip(
        a.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb)


@pytest.mark.parametrize(
    "switch",
    [
        {"caption_pairing": "all"},
        {"caption_pairing": "mean"},
        {"contrastive_direction": "i2t"},
        {"query": "residual"},
        {"distill_grad_to_aggregator": True},
        {"aggregator": "mean"},
    ],
)
def test_every_switch_trains(world, switch: dict) -> None:
    cfg = RetrievalConfig(**{**FAST, "adamw_epochs": 2, **switch})
    r = train_retrieval(world["train"], cfg, model_id="sim", dataset="sim", progress=False)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in r.history)
    q = r.queries(world["test"].features.x)
    assert torch.allclose(q.norm(dim=-1), torch.ones(len(q)), atol=1e-5)


def test_zero_shot_baseline_queries_with_the_image_embedding(world) -> None:
    r = train_retrieval(
        world["train"], RetrievalConfig(method="zeroshot"), model_id="s", dataset="s"
    )
    x = world["test"].features.x
    assert r.model is None and torch.allclose(r.queries(x), F.normalize(x, dim=-1))


@pytest.mark.slow
def test_training_learns_the_caption_space() -> None:
    """In the caption world (d = 256, so h has a 16-wide bottleneck) the paper's query h(x) is
    at chance untrained and far above it after training."""
    small = small_world()
    sim = simulate_captions("coco", replace(small, sim=replace(small.sim, d=256)), seed=1)
    cfg = RetrievalConfig(**{**FAST, "adamw_epochs": 10})
    untrained = cfg.model_copy(update={"adamw_epochs": 1, "adamw_lr": 1e-9})
    kw = {"model_id": "s", "dataset": "s", "progress": False}
    before = evaluate_split(train_retrieval(sim["train"], untrained, **kw), sim["test"])
    after = evaluate_split(train_retrieval(sim["train"], cfg, **kw), sim["test"])
    assert before["image_retrieval_recall@10"] < 0.15  # chance: 10 of 100 images
    assert after["image_retrieval_recall@10"] > before["image_retrieval_recall@10"] + 0.1


def test_heldout_positions() -> None:
    assert heldout_positions(9, 500) == []
    assert heldout_positions(100, 500) == list(range(0, 100, 10))
    assert heldout_positions(100_000, 500) == list(range(0, 100_000, 200))


def test_recall_matches_clip_benchmark_on_the_same_embeddings() -> None:
    """CLIP_benchmark's own `zeroshot_retrieval.evaluate` (the library as the consumer), fed our
    queries and caption embeddings through a model whose towers look them up."""
    from clip_benchmark.metrics.zeroshot_retrieval import evaluate

    gen = torch.Generator().manual_seed(0)
    n_img, per = 23, 3
    queries = F.normalize(torch.randn(n_img, 16, generator=gen), dim=-1)
    owner = torch.arange(n_img).repeat_interleave(per)
    texts = F.normalize(queries[owner] + 0.9 * torch.randn(len(owner), 16, generator=gen), dim=-1)

    class Lookup(torch.nn.Module):
        def encode_image(self, idx: torch.Tensor) -> torch.Tensor:
            return queries[idx]

        def encode_text(self, idx: torch.Tensor) -> torch.Tensor:
            return texts[idx]

    batches = [
        (torch.arange(s, min(s + 5, n_img)),
         [[f"{j}" for j in range(i * per, (i + 1) * per)] for i in range(s, min(s + 5, n_img))])
        for s in range(0, n_img, 5)
    ]  # fmt: skip

    def tokenizer(strings: list[str]) -> torch.Tensor:
        return torch.tensor([int(s) for s in strings])

    theirs = evaluate(Lookup(), batches, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    ours = recall_at_k(queries, texts, owner)
    assert ours.keys() == theirs.keys()
    for k, v in theirs.items():
        assert ours[k] == pytest.approx(v, abs=1e-6), k


def test_simulated_world_is_seeded_and_shares_concepts(world) -> None:
    again = simulate_captions("coco", small_world(), seed=0)
    assert torch.equal(world["test"].features.x, again["test"].features.x)
    flickr = simulate_captions("flickr", small_world(), seed=0)
    assert not torch.equal(world["test"].features.x, flickr["test"].features.x)
    assert world["train"].captions.embeddings.shape == (400 * 5, 64)
    zs = recall_at_k(world["test"].features.x, world["test"].captions.embeddings,
                     world["test"].captions.caption_image)  # fmt: skip
    assert zs["text_retrieval_recall@10"] > 10 / 500  # CLIP-like: far above chance
