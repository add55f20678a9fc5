"""What both simulated worlds (classes and descriptions in `aape.simulation`, images and their
captions in `aape.vl.simulation`) are made of: every knob of the world (`SimConfig`, and
`DescriptionModel`, how an 'LLM' writes), the concepts one seed draws from them (the modality
directions, families, class identities, attributes and class names), and the seeded random
streams and vector helpers the generators share. See docs/simulation.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from prompt_banks.errors import UserError

# Stream ids: each purpose draws from its own generator so that changing one part (say the
# description model) leaves every other part of the world bit-identical.
CONCEPTS, IMAGES, TEMPLATES, DESCRIPTIONS = 1, 2, 3, 4


@dataclass(frozen=True)
class DescriptionModel:
    """How an 'LLM' writes a class description (see docs/simulation.md)."""

    # What the LLM believes about a class (fixed per class: averaging its descriptions converges
    # to the belief, not to the truth): each true attribute is known with p_known, plus
    # `false_beliefs` wrong attributes it consistently attributes to the class.
    p_known: float = 0.6
    false_beliefs: int = 2
    p_mention: float = 0.4  # chance that a description mentions each believed attribute
    slip_rate: float = 0.5  # Poisson mean of random one-off wrong attributes per description
    name_weight: float = 0.6  # descriptions usually contain the class name
    attribute_weight: float = 0.6  # weight of the mentioned attributes (per sqrt(3) attributes)
    noise: float = 0.7  # phrasing: what the sentence says that is not visual


# A weaker writer for the "larger LLM" claim: knows fewer true attributes, believes more wrong
# ones, slips more often.
SMALL_LLM = DescriptionModel(p_known=0.35, false_beliefs=4, slip_rate=1.0, noise=0.8)


@dataclass(frozen=True)
class SimConfig:
    """Every knob of the simulated world. Defaults: the study's scale (d = 512, 100 classes)."""

    d: int = 512
    n_classes: int = 100
    n_families: int = 20  # classes per family = n_classes / n_families (fine-grained groups)
    n_attributes: int = 160  # shared visual vocabulary
    family_pool: int = 8  # attributes each family draws its classes' attributes from
    attrs_per_class: int = 8  # half from the family pool, half from the whole vocabulary
    # image side
    gap_image: float = 1.0  # weight of m_img in every image embedding
    family_weight: float = 0.6
    identity_weight: float = 0.25
    attribute_weight: float = 0.8
    p_show: float = 0.5  # chance that an image shows each true attribute of its class
    distractors: float = 12.0  # Poisson mean of other classes' attributes an image shows
    identity_jitter: float = 0.6  # per-image spread of how clearly the class's own look shows
    sibling_confusion: float = 0.8  # images also resemble their family's other classes
    image_noise: float = 0.9  # what the picture shows that is not the class (background, pose)
    view_noise: float = 0.35  # augmented views: random resized crop + flip
    view_drop: float = 0.1  # chance a view loses a shown attribute (cropped out)
    # text side
    gap_text: float = 1.0
    gap_cos: float = 0.3  # cos(m_img, m_txt): the two cones are apart but not orthogonal
    name_family_weight: float = 0.5  # names know their family ("an aircraft")
    name_quality_generic: tuple[float, float] = (0.5, 0.8)
    name_quality_specialised: tuple[float, float] = (0.1, 0.3)
    specialised_share: float = 0.5  # share of families whose names are specialised
    name_other: float = 0.7  # the non-visual meaning of a name
    template_noise: float = 0.3
    text_alignment_noise: float = 0.5  # attribute words vs attribute looks (imperfect alignment)
    descriptions: DescriptionModel = field(default_factory=DescriptionModel)
    prompts_per_class: tuple[int, int] = (20, 90)  # inclusive range, CuPL's banks
    # splits
    train_per_class: int = 20  # pool the K-shot sampler draws from (K <= 16)
    val_per_class: int = 4
    test_per_class: int = 25
    n_views: int = 8  # augmented views per training image (view 0 is the centre crop)

    def __post_init__(self) -> None:
        checks = {
            "d": self.d >= 16,
            "n_classes": self.n_classes >= 2,
            "n_families": 1 <= self.n_families <= self.n_classes,
            "family_pool": 1 <= self.family_pool <= self.n_attributes,
            "attrs_per_class": 2 <= self.attrs_per_class <= 2 * self.family_pool
            and self.attrs_per_class // 2 <= self.n_attributes,
            "prompts_per_class": 1 <= self.prompts_per_class[0] <= self.prompts_per_class[1],
            "train_per_class": self.train_per_class >= 1,
            "test_per_class": self.test_per_class >= 1,
            "n_views": self.n_views >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise UserError(
                    f"simulation.{name}: {getattr(self, name)!r} is out of range; see "
                    "docs/simulation.md"
                )


def rng_stream(seed: int, stream: int, *extra: int) -> np.random.Generator:
    """The generator of one purpose (a stream id above, or a module's own) of a seeded world."""
    return np.random.default_rng([seed, stream, *extra])


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """`n` random unit vectors in d dimensions, [n, d]."""
    v = rng.standard_normal((n, d))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def normalize(v: np.ndarray) -> np.ndarray:
    """Each vector (the last axis) scaled to unit length."""
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def noise(rng: np.random.Generator, shape: tuple[int, ...], d: int) -> np.ndarray:
    """Isotropic noise whose norm is about 1 per vector."""
    return rng.standard_normal((*shape, d)) / math.sqrt(d)


@dataclass
class Concepts:
    """What one seed of a world draws once and every image and text is built from."""

    m_img: np.ndarray
    m_txt: np.ndarray
    family_dirs: np.ndarray  # [F, d]
    identity: np.ndarray  # [C, d]
    attr_img: np.ndarray  # [A, d]
    attr_txt: np.ndarray  # [A, d]
    family: np.ndarray  # [C]
    specialised: np.ndarray  # [C]
    name_quality: np.ndarray  # [C]
    class_attributes: np.ndarray  # [C, k]
    names: np.ndarray  # [C, d] name vectors (unnormalised)


def draw_concepts(cfg: SimConfig, seed: int) -> Concepts:
    """The concepts of the world (`cfg`, `seed`): the same for its normal and control worlds and
    for every caption domain."""
    rng = rng_stream(seed, CONCEPTS)
    d, c, a = cfg.d, cfg.n_classes, cfg.n_attributes
    m_img, perp = unit(rng, 2, d)
    perp = normalize(perp - (perp @ m_img) * m_img)
    m_txt = cfg.gap_cos * m_img + math.sqrt(1 - cfg.gap_cos**2) * perp
    family_dirs = unit(rng, cfg.n_families, d)
    identity = unit(rng, c, d)
    attr_img = unit(rng, a, d)
    attr_txt = normalize(attr_img + cfg.text_alignment_noise * noise(rng, (a,), d))
    # Families get contiguous class blocks, then labels are shuffled: base and new classes are
    # siblings, as in real datasets (new aircraft variants of known manufacturers).
    family = rng.permutation(np.arange(c) % cfg.n_families)
    n_spec = round(cfg.specialised_share * cfg.n_families)
    spec_families = rng.permutation(cfg.n_families)[:n_spec]
    specialised = np.isin(family, spec_families)
    lo_g, hi_g = cfg.name_quality_generic
    lo_s, hi_s = cfg.name_quality_specialised
    name_quality = np.where(specialised, rng.uniform(lo_s, hi_s, c), rng.uniform(lo_g, hi_g, c))
    pools = np.stack([rng.choice(a, cfg.family_pool, replace=False) for _ in range(cfg.n_families)])
    k_fam = cfg.attrs_per_class // 2
    k_glob = cfg.attrs_per_class - k_fam
    class_attributes = np.zeros((c, cfg.attrs_per_class), dtype=np.int64)
    for ci in range(c):
        own = rng.choice(pools[family[ci]], k_fam, replace=False)
        rest = np.setdiff1d(np.arange(a), own)
        class_attributes[ci] = np.concatenate([own, rng.choice(rest, k_glob, replace=False)])
    # The class's own visual signature (what tells it from its siblings), and its name.
    signature = normalize(
        cfg.identity_weight * identity
        + cfg.attribute_weight * attr_img[class_attributes].sum(1) / math.sqrt(cfg.attrs_per_class)
    )
    name_other = unit(rng, c, d)
    names = (
        cfg.name_family_weight * family_dirs[family]
        + name_quality[:, None] * signature
        + cfg.name_other * name_other
    )
    return Concepts(
        m_img,
        m_txt,
        family_dirs,
        identity,
        attr_img,
        attr_txt,
        family,
        specialised,
        name_quality,
        class_attributes,
        names,
    )
