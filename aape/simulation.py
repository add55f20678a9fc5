"""A seeded, CLIP-like joint image-text embedding space: AAPE validated without pretrained CLIP.

Every vector is built from a few shared ingredients (see docs/simulation.md for each parameter
and why it is there):

* two modality directions `m_img`, `m_txt` (the modality gap: every image embedding leans on
  `m_img`, every text embedding on `m_txt`; they are not orthogonal, as in CLIP's cones);
* families of classes (fine-grained groups: aircraft variants, dog breeds) with a shared visual
  direction each, and a vocabulary of visual attributes shared across classes;
* per class a private visual identity and a set of true attributes (half from its family's pool,
  half from the global vocabulary), so siblings look alike;
* a class *name* that knows the family well but the class's own look only by `name_quality`:
  low for specialised classes (the names CLIP has rarely seen), higher for generic ones;
* images that show their class's family, identity and each true attribute with a per-image
  chance and strength, plus image noise, and several augmented views (attribute drop-out +
  view noise) per training image;
* LLM descriptions that name the class and mention attributes the LLM *believes* the class has
  (some of its true attributes, a few consistent wrong ones) plus one-off slips and phrasing
  noise. The `control` world keeps everything but draws the beliefs independently of the class:
  its descriptions carry no visual information beyond the class name.

Random streams are split by purpose, so that for one seed the normal and control worlds share
every concept, image and template and differ only in their descriptions (paired comparisons).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import torch

from aape.data import ClassTexts, FeatureSet, Task
from aape.sim_concepts import (
    DESCRIPTIONS,
    IMAGES,
    SMALL_LLM,
    TEMPLATES,
    Concepts,
    DescriptionModel,
    SimConfig,
    draw_concepts,
    noise,
    normalize,
    rng_stream,
)
from prompt_banks.errors import UserError

World = Literal["normal", "control"]
WORLDS: tuple[str, ...] = ("normal", "control")


@dataclass
class SimTruth:
    """What the generator knows and a real dataset would not: used by tests and trait reports."""

    family: np.ndarray  # [C] family of each class
    specialised: np.ndarray  # [C] bool, the name is specialised (weak)
    name_quality: np.ndarray  # [C]
    class_attributes: np.ndarray  # [C, k] attribute ids
    attribute_text: np.ndarray  # [A, d] unit text directions of the attributes
    mentions: list[np.ndarray]  # per class: [n_c, A] bool, which attributes each description says
    m_img: np.ndarray
    m_txt: np.ndarray


@dataclass
class SimWorld:
    task: Task
    truth: SimTruth
    config: SimConfig
    world: str
    seed: int


def _images(
    cfg: SimConfig, k: Concepts, rng: np.random.Generator, per_class: int, n_views: int
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [C*per_class*n_views, d] and labels, ordered by class, image, view.
    View 0 is the centre crop (no view noise, nothing dropped)."""
    c, kk, d = cfg.n_classes, cfg.attrs_per_class, cfg.d
    labels = np.repeat(np.arange(c), per_class)
    n = len(labels)
    strength = (rng.random((n, kk)) < cfg.p_show) * np.clip(
        1 + 0.3 * rng.standard_normal((n, kk)), 0, None
    )
    clarity = np.clip(1 + cfg.identity_jitter * rng.standard_normal(n), 0, None)
    # Look-alikes: a random mix of the identities of the other classes of the same family.
    same_family = k.family[labels][:, None] == k.family[None, :]
    same_family[np.arange(n), labels] = False
    mix = rng.standard_normal((n, c)) * same_family
    mix /= np.sqrt(np.maximum(same_family.sum(1, keepdims=True), 1))
    base = (
        cfg.gap_image * k.m_img
        + cfg.family_weight * k.family_dirs[k.family[labels]]
        + cfg.identity_weight * clarity[:, None] * k.identity[labels]
        + cfg.identity_weight * cfg.sibling_confusion * (mix @ k.identity)
        + cfg.image_noise * noise(rng, (n,), d)
    )
    attrs = k.attr_img[k.class_attributes[labels]]  # [n, k, d]
    scale = cfg.attribute_weight / math.sqrt(kk * cfg.p_show)
    # Context: attributes of other classes that happen to be in the picture.
    context = (
        rng.poisson(cfg.distractors / cfg.n_attributes, (n, cfg.n_attributes)) > 0
    ) @ k.attr_img
    base = base + scale * context
    out = np.empty((n, n_views, d))
    for v in range(n_views):
        keep = strength if v == 0 else strength * (rng.random((n, kk)) >= cfg.view_drop)
        x = base + scale * np.einsum("nk,nkd->nd", keep, attrs)
        if v > 0:
            x = x + cfg.view_noise * noise(rng, (n,), d)
        out[:, v] = x
    return normalize(out).reshape(n * n_views, d), labels


def _templates(cfg: SimConfig, k: Concepts, seed: int) -> np.ndarray:
    rng = rng_stream(seed, TEMPLATES)
    t = cfg.gap_text * k.m_txt + k.names + cfg.template_noise * noise(rng, (cfg.n_classes,), cfg.d)
    return normalize(t)


def _descriptions(
    cfg: SimConfig, k: Concepts, seed: int, world: str, llm: DescriptionModel
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per class: description embeddings [n_c, d] and which attributes each mentions [n_c, A]."""
    rng = rng_stream(seed, DESCRIPTIONS, WORLDS.index(world))
    lo, hi = cfg.prompts_per_class
    embeddings, mentions = [], []
    for ci in range(cfg.n_classes):
        n = int(rng.integers(lo, hi + 1))
        truth = k.class_attributes[ci]
        if world == "control":
            # As many beliefs as a normal class gets, none chosen because of the class: the
            # descriptions carry no visual information beyond the class name.
            n_beliefs = int((rng.random(len(truth)) < llm.p_known).sum()) + llm.false_beliefs
            beliefs = rng.choice(cfg.n_attributes, min(n_beliefs, cfg.n_attributes), replace=False)
        else:
            known = truth[rng.random(len(truth)) < llm.p_known]
            wrong = rng.choice(
                np.setdiff1d(np.arange(cfg.n_attributes), truth), llm.false_beliefs, replace=False
            )
            beliefs = np.concatenate([known, wrong])
        said = np.zeros((n, cfg.n_attributes), dtype=bool)
        rows, cols = np.nonzero(rng.random((n, len(beliefs))) < llm.p_mention)
        said[rows, beliefs[cols]] = True
        n_slips = rng.poisson(llm.slip_rate, n)
        slip_rows = np.repeat(np.arange(n), n_slips)
        said[slip_rows, rng.integers(0, cfg.n_attributes, len(slip_rows))] = True
        p = (
            cfg.gap_text * k.m_txt
            + llm.name_weight * k.names[ci]
            + llm.attribute_weight * (said @ k.attr_txt) / math.sqrt(3)
            + llm.noise * noise(rng, (n,), cfg.d)
        )
        embeddings.append(normalize(p))
        mentions.append(said)
    return embeddings, mentions


def _feature_set(x: np.ndarray, labels: np.ndarray, n_views: int, split: str) -> FeatureSet:
    n_images = len(labels)
    ids = [f"{split}/c{lab:03d}/{i:05d}" for i, lab in enumerate(labels.tolist())]
    return FeatureSet(
        x=torch.from_numpy(x.astype(np.float32)),
        labels=torch.from_numpy(np.repeat(labels, n_views).astype(np.int64)),
        image_index=torch.arange(n_images).repeat_interleave(n_views),
        view=torch.arange(n_views).repeat(n_images),
        image_ids=ids,
    )


def class_names(cfg: SimConfig, truth_family: np.ndarray, specialised: np.ndarray) -> list[str]:
    """Readable names that say what the simulation made of each class."""
    kind = np.where(specialised, "specialised", "generic")
    return [f"{kind[i]} f{truth_family[i]:02d} class {i:03d}" for i in range(cfg.n_classes)]


def simulate(
    config: SimConfig | None = None,
    *,
    world: str = "normal",
    seed: int = 0,
    llm: DescriptionModel | None = None,
) -> SimWorld:
    """Generate one world. Same (config, seed): bit-identical output. Same seed, other `world`
    or `llm`: identical images and templates, other descriptions."""
    cfg = config or SimConfig()
    if world not in WORLDS:
        raise UserError(f"world: '{world}' is not one of {', '.join(WORLDS)}")
    llm = llm or cfg.descriptions
    k = draw_concepts(cfg, seed)
    rng = rng_stream(seed, IMAGES)
    x_train, y_train = _images(cfg, k, rng, cfg.train_per_class, cfg.n_views)
    x_val, y_val = _images(cfg, k, rng, cfg.val_per_class, 1)
    x_test, y_test = _images(cfg, k, rng, cfg.test_per_class, 1)
    bank_list, mentions = _descriptions(cfg, k, seed, world, llm)
    n_max = max(len(b) for b in bank_list)
    bank = np.zeros((cfg.n_classes, n_max, cfg.d), dtype=np.float32)
    mask = np.zeros((cfg.n_classes, n_max), dtype=bool)
    for ci, b in enumerate(bank_list):
        bank[ci, : len(b)] = b
        mask[ci, : len(b)] = True
    texts = ClassTexts(
        names=class_names(cfg, k.family, k.specialised),
        templates=torch.from_numpy(_templates(cfg, k, seed).astype(np.float32)),
        bank=torch.from_numpy(bank),
        bank_mask=torch.from_numpy(mask),
    )
    task = Task(
        name=f"sim-{world}" + ("" if llm == cfg.descriptions else "-llm-" + _llm_tag(llm)),
        texts=texts,
        train=_feature_set(x_train, y_train, cfg.n_views, "train"),
        val=_feature_set(x_val, y_val, 1, "val"),
        test=_feature_set(x_test, y_test, 1, "test"),
        model_id=f"sim-clip/d{cfg.d}-seed{seed}",
    )
    truth = SimTruth(
        family=k.family,
        specialised=k.specialised,
        name_quality=k.name_quality,
        class_attributes=k.class_attributes,
        attribute_text=k.attr_txt,
        mentions=mentions,
        m_img=k.m_img,
        m_txt=k.m_txt,
    )
    return SimWorld(task=task, truth=truth, config=cfg, world=world, seed=seed)


def _llm_tag(llm: DescriptionModel) -> str:
    return "small" if llm == SMALL_LLM else "custom"


def config_dict(cfg: SimConfig) -> dict:
    """JSON-able parameters (written beside every generated folder)."""
    return asdict(cfg)


def small_config(**overrides: object) -> SimConfig:
    """A tiny world for tests and `--quick` runs (d = 64, 12 classes)."""
    base = SimConfig(
        d=64,
        n_classes=12,
        n_families=4,
        n_attributes=40,
        family_pool=6,
        attrs_per_class=6,
        prompts_per_class=(20, 30),
        train_per_class=16,
        val_per_class=2,
        test_per_class=10,
        n_views=2,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


# -- traits: what makes the world CLIP-like, measured ------------------------------------------


def zero_shot_accuracy(
    x: torch.Tensor, labels: torch.Tensor, class_embeddings: torch.Tensor
) -> float:
    return float(((x @ class_embeddings.T).argmax(1) == labels).float().mean())


def traits(sim: SimWorld) -> dict[str, float]:
    """The measured CLIP-like traits of a world (norms, gap, cosines, overlap, zero-shot)."""
    t = sim.task
    x, y = t.test.x.double(), t.test.labels
    tmpl = t.texts.templates.double()
    mask = t.texts.bank_mask
    assert t.texts.bank is not None and mask is not None
    prompts = t.texts.bank[mask].double()
    cos_xt = x @ tmpl.T
    match = cos_xt[torch.arange(len(y)), y]
    other = (cos_xt.sum(1) - match) / (tmpl.shape[0] - 1)
    n_img = min(len(x), 500)
    xx = x[:n_img] @ x[:n_img].T
    same = y[:n_img, None] == y[None, :n_img]
    off = ~torch.eye(n_img, dtype=torch.bool)
    spec = torch.from_numpy(sim.truth.specialised)[y]
    zs_pred = cos_xt.argmax(1)
    cupl = t.texts.bank_mean().double()
    cupl_pred = (x @ cupl.T).argmax(1)
    norms = torch.cat([t.train.x, t.test.x, t.texts.templates, t.texts.bank[mask]]).norm(dim=1)
    return {
        "max_norm_error": float((norms - 1).abs().max()),
        "modality_gap": float((x.mean(0) - prompts.mean(0)).norm()),
        "cos_image_template_match": float(match.mean()),
        "cos_image_template_other": float(other.mean()),
        "cos_image_image_same_class": float(xx[same & off].mean()),
        "cos_image_image_other_class": float(xx[~same].mean()),
        "description_attribute_overlap": description_attribute_overlap(sim),
        "description_attribute_cosine": description_attribute_cosine(sim),
        "zero_shot_acc": float((zs_pred == y).double().mean()),
        "zero_shot_acc_generic": float((zs_pred == y)[~spec].double().mean()),
        "zero_shot_acc_specialised": float((zs_pred == y)[spec].double().mean()),
        "cupl_acc": float((cupl_pred == y).double().mean()),
    }


def description_attribute_overlap(sim: SimWorld) -> float:
    """Mean share of the class's true attributes among those a description mentions (0 if it
    mentions none): what the LLM got right. Control worlds sit near chance (k / A)."""
    hits, said = 0.0, 0.0
    for ci, m in enumerate(sim.truth.mentions):
        hits += float(m[:, sim.truth.class_attributes[ci]].sum())
        said += float(m.sum())
    return hits / max(said, 1.0)


def description_attribute_cosine(sim: SimWorld) -> float:
    """Observable in embedding space: mean cos(description, its class's true attribute words)
    minus mean cos(description, another class's attribute words). Near 0 in the control world."""
    attr = torch.from_numpy(sim.truth.attribute_text)
    bank, mask = sim.task.texts.bank, sim.task.texts.bank_mask
    assert bank is not None and mask is not None
    c = bank.shape[0]
    # Per class: the mean direction of its true attributes, then cos with every description.
    own = torch.nn.functional.normalize(
        attr[torch.from_numpy(sim.truth.class_attributes)].mean(1), dim=-1
    )
    cos = torch.einsum("cnd,kd->cnk", bank.double(), own)  # [C, n, C]
    m = mask.double()
    per_class = (cos * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True)  # [C, C]
    diag = per_class.diagonal()
    off = (per_class.sum(1) - diag) / (c - 1)
    return float((diag - off).mean())
