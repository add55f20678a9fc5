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
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from aape.data import ClassTexts, FeatureSet, Task
from prompt_banks.errors import UserError

World = Literal["normal", "control"]
WORLDS: tuple[str, ...] = ("normal", "control")

# Stream ids: each purpose draws from its own generator so that changing one part (say the
# description model) leaves every other part of the world bit-identical.
_CONCEPTS, _IMAGES, _TEMPLATES, _DESCRIPTIONS = 1, 2, 3, 4


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


def _rng(seed: int, stream: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *extra])


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], d: int) -> np.ndarray:
    """Isotropic noise whose norm is about 1 per vector."""
    return rng.standard_normal((*shape, d)) / math.sqrt(d)


@dataclass
class _Concepts:
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


def _concepts(cfg: SimConfig, seed: int) -> _Concepts:
    rng = _rng(seed, _CONCEPTS)
    d, c, a = cfg.d, cfg.n_classes, cfg.n_attributes
    m_img, perp = _unit(rng, 2, d)
    perp = _normalize(perp - (perp @ m_img) * m_img)
    m_txt = cfg.gap_cos * m_img + math.sqrt(1 - cfg.gap_cos**2) * perp
    family_dirs = _unit(rng, cfg.n_families, d)
    identity = _unit(rng, c, d)
    attr_img = _unit(rng, a, d)
    attr_txt = _normalize(attr_img + cfg.text_alignment_noise * _noise(rng, (a,), d))
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
    signature = _normalize(
        cfg.identity_weight * identity
        + cfg.attribute_weight * attr_img[class_attributes].sum(1) / math.sqrt(cfg.attrs_per_class)
    )
    name_other = _unit(rng, c, d)
    names = (
        cfg.name_family_weight * family_dirs[family]
        + name_quality[:, None] * signature
        + cfg.name_other * name_other
    )
    return _Concepts(
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


def _images(
    cfg: SimConfig, k: _Concepts, rng: np.random.Generator, per_class: int, n_views: int
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
        + cfg.image_noise * _noise(rng, (n,), d)
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
            x = x + cfg.view_noise * _noise(rng, (n,), d)
        out[:, v] = x
    return _normalize(out).reshape(n * n_views, d), labels


def _templates(cfg: SimConfig, k: _Concepts, seed: int) -> np.ndarray:
    rng = _rng(seed, _TEMPLATES)
    t = cfg.gap_text * k.m_txt + k.names + cfg.template_noise * _noise(rng, (cfg.n_classes,), cfg.d)
    return _normalize(t)


def _descriptions(
    cfg: SimConfig, k: _Concepts, seed: int, world: str, llm: DescriptionModel
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per class: description embeddings [n_c, d] and which attributes each mentions [n_c, A]."""
    rng = _rng(seed, _DESCRIPTIONS, WORLDS.index(world))
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
            + llm.noise * _noise(rng, (n,), cfg.d)
        )
        embeddings.append(_normalize(p))
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
    k = _concepts(cfg, seed)
    rng = _rng(seed, _IMAGES)
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
