"""The CLIP-like simulation: its traits, determinism and the control world."""

from __future__ import annotations

import pytest
import torch

from aape import simulation as sim
from prompt_banks.errors import UserError

# Big enough for class-level statistics, small enough to build in well under a second.
MEDIUM = sim.SimConfig(
    d=128,
    n_classes=40,
    n_families=8,
    n_attributes=64,
    prompts_per_class=(20, 40),
    train_per_class=4,
    val_per_class=1,
    test_per_class=20,
    n_views=2,
)


@pytest.fixture(scope="module")
def normal() -> sim.SimWorld:
    return sim.simulate(MEDIUM, world="normal", seed=3)


@pytest.fixture(scope="module")
def control() -> sim.SimWorld:
    return sim.simulate(MEDIUM, world="control", seed=3)


@pytest.fixture(scope="module")
def normal_traits(normal: sim.SimWorld) -> dict[str, float]:
    return sim.traits(normal)


def test_every_embedding_is_unit_norm(normal_traits: dict[str, float]) -> None:
    assert normal_traits["max_norm_error"] < 1e-5


def test_modality_gap_separates_images_from_texts(
    normal: sim.SimWorld, normal_traits: dict[str, float]
) -> None:
    t = normal.task
    x, p = t.test.x.double(), t.texts.bank[t.texts.bank_mask].double()  # type: ignore[index]
    gap = x.mean(0) - p.mean(0)
    assert gap.norm() > 0.5
    # One direction tells every image from every text, as in CLIP's two cones.
    threshold = 0.5 * ((x @ gap).min() + (p @ gap).max())
    assert (x @ gap > threshold).all() and (p @ gap < threshold).all()
    traits = normal_traits
    assert traits["cos_image_template_match"] > traits["cos_image_template_other"] + 0.05
    assert traits["cos_image_image_same_class"] > traits["cos_image_template_match"]


def test_specialised_names_are_weaker_than_generic_ones(normal_traits: dict[str, float]) -> None:
    traits = normal_traits
    assert traits["zero_shot_acc_specialised"] < traits["zero_shot_acc_generic"] - 0.1


def test_descriptions_mention_true_attributes_unlike_control(
    normal_traits: dict[str, float], control: sim.SimWorld
) -> None:
    a, b = normal_traits, sim.traits(control)
    assert a["description_attribute_overlap"] > 3 * b["description_attribute_overlap"]
    # Observable in the embeddings alone, without the generator's bookkeeping.
    # (The control keeps a little: its descriptions still contain the class name, whose
    # embedding carries some of the class's look.)
    assert a["description_attribute_cosine"] > b["description_attribute_cosine"] + 0.05
    assert a["cupl_acc"] > b["cupl_acc"]


def test_control_shares_images_and_templates(normal: sim.SimWorld, control: sim.SimWorld) -> None:
    assert torch.equal(normal.task.train.x, control.task.train.x)
    assert torch.equal(normal.task.test.x, control.task.test.x)
    assert torch.equal(normal.task.texts.templates, control.task.texts.templates)
    assert not torch.equal(normal.task.texts.bank, control.task.texts.bank)  # type: ignore[arg-type]


def test_same_seed_same_world_other_seed_other_world() -> None:
    cfg = sim.small_config()
    a, b, c = sim.simulate(cfg, seed=5), sim.simulate(cfg, seed=5), sim.simulate(cfg, seed=6)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a.task, split).x, getattr(b.task, split).x)
    assert torch.equal(a.task.texts.bank, b.task.texts.bank)  # type: ignore[arg-type]
    assert a.task.texts.names == b.task.texts.names
    assert not torch.equal(a.task.test.x, c.task.test.x)


def test_shapes_views_and_bank_sizes() -> None:
    cfg = sim.small_config()
    t = sim.simulate(cfg).task
    assert t.texts.dim == cfg.d and len(t.texts.names) == cfg.n_classes
    assert t.train.n_images == cfg.n_classes * cfg.train_per_class
    assert len(t.train.x) == t.train.n_images * cfg.n_views
    assert set(t.train.view.tolist()) == set(range(cfg.n_views)) and set(t.test.view.tolist()) == {
        0
    }
    counts = t.texts.bank_mask.sum(1)  # type: ignore[union-attr]
    assert counts.min() >= cfg.prompts_per_class[0] and counts.max() <= cfg.prompts_per_class[1]
    assert len(set(t.train.image_ids)) == t.train.n_images


def test_augmented_views_stay_close_to_their_image() -> None:
    t = sim.simulate(sim.small_config(n_views=3)).task
    x = t.train.x.view(-1, 3, t.texts.dim)
    same_image = (x[:, 0] * x[:, 1]).sum(-1).mean()
    other_image = (x[:, 0] * x.roll(1, 0)[:, 1]).sum(-1).mean()
    assert same_image > other_image + 0.1


def test_small_llm_keeps_images_and_writes_worse_descriptions() -> None:
    big, small = sim.simulate(MEDIUM, seed=1), sim.simulate(MEDIUM, seed=1, llm=sim.SMALL_LLM)
    assert torch.equal(big.task.test.x, small.task.test.x)
    assert sim.description_attribute_overlap(small) < sim.description_attribute_overlap(big)
    assert small.task.name != big.task.name


def test_bad_world_and_bad_config_are_user_errors() -> None:
    with pytest.raises(UserError, match="world"):
        sim.simulate(sim.small_config(), world="noisy")
    with pytest.raises(UserError, match="n_classes"):
        sim.small_config(n_classes=1)


@pytest.mark.slow
def test_default_scale_is_the_papers() -> None:
    w = sim.simulate()
    t = w.task
    assert t.texts.dim == 512 and len(t.texts.names) >= 100
    counts = t.texts.bank_mask.sum(1)  # type: ignore[union-attr]
    assert counts.min() >= 20 and counts.max() <= 90
    assert sim.traits(w)["max_norm_error"] < 1e-5
