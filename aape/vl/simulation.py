"""The CLIP-like simulation with captions: images that carry noisy human descriptions.

Built on `aape.simulation`'s world (the same modality gap, families, classes, visual attribute
vocabulary with imperfectly aligned attribute words, and class names). Here an image is a scene
of one class that shows some of its class's attributes and some stray ones, each with its own
strength; its captions are written by people who look at *that* image: each mentions each
visible attribute with a chance that grows with how visible it is, names the scene's class
most of the time, now and then mentions something that is not there, and says things that are
not visual (phrasing noise). So captions carry what CLIP's image embedding carries, seen
through the text tower's side of the gap and through noise.

Two domains share every concept (`coco`-like and `flickr`-like): they draw their scenes from
different class mixes and caption with different habits, so training on one and testing on the
other is a zero-shot transfer, as COCO -> Flickr30k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from aape.data import FeatureSet
from aape.sim_concepts import Concepts, SimConfig, draw_concepts, noise, normalize, rng_stream
from aape.vl.bank import CaptionBank
from aape.vl.tasks import CaptionSplit
from prompt_banks.errors import UserError

_SCENES, _CAPTIONS = 11, 12  # stream ids beside sim_concepts' 1-4


@dataclass(frozen=True)
class CaptionStyle:
    """How one domain's annotators write (see the module doc)."""

    p_mention: float = 0.4  # chance to mention a fully visible attribute
    name_weight: float = 0.5  # weight of the class name when a caption names it
    p_name: float = 0.7  # chance that a caption names the scene's class
    attribute_weight: float = 0.7  # weight of the mentioned attributes (per sqrt(3))
    slip_rate: float = 0.3  # Poisson mean of mentioned attributes that are not in the image
    noise: float = 1.0  # phrasing: what a caption says that is not visual
    class_alpha: float = 0.5  # Dirichlet concentration of the domain's class mix


DOMAINS = {
    "coco": CaptionStyle(),
    "flickr": CaptionStyle(p_mention=0.5, p_name=0.5, slip_rate=0.4, noise=1.1),
}


@dataclass(frozen=True)
class CaptionWorldConfig:
    # The classification world's defaults, with 80 scene classes and noisier pictures: CLIP
    # zero-shot then lands at i2t R@1 ~60, t2i ~36 (real CLIP on COCO 5k: roughly 52-58, 33-38).
    sim: SimConfig = field(
        default_factory=lambda: SimConfig(n_classes=80, n_families=16, image_noise=1.1)
    )
    captions_per_image: int = 5
    train_images: int = 6000
    test_images: int = 1000
    stray_attributes: float = 3.0  # Poisson mean of attributes of no class shown per image

    def __post_init__(self) -> None:
        if self.captions_per_image < 1 or self.train_images < 2 or self.test_images < 2:
            raise UserError(
                "simulation: captions_per_image >= 1 and train/test_images >= 2 are needed"
            )


def small_world(**overrides: object) -> CaptionWorldConfig:
    """A tiny world for tests (d = 64)."""
    sim = SimConfig(d=64, n_classes=12, n_families=4, n_attributes=40, family_pool=6,
                    attrs_per_class=6)  # fmt: skip
    base = CaptionWorldConfig(sim=sim, train_images=400, test_images=100)
    return replace(base, **overrides)  # type: ignore[arg-type]


def _visible(
    cfg: CaptionWorldConfig, k: Concepts, rng: np.random.Generator, labels: np.ndarray
) -> np.ndarray:
    """How strongly each image shows each attribute, [n, A] (0 = not shown)."""
    s, n = cfg.sim, len(labels)
    shown = rng.random((n, s.attrs_per_class)) < s.p_show
    strength = shown * np.clip(1 + 0.3 * rng.standard_normal(shown.shape), 0.2, None)
    vis = np.zeros((n, s.n_attributes))
    np.put_along_axis(vis, k.class_attributes[labels], strength, axis=1)
    stray = rng.poisson(cfg.stray_attributes / s.n_attributes, (n, s.n_attributes)) > 0
    return np.maximum(vis, stray * np.clip(1 + 0.3 * rng.standard_normal(vis.shape), 0.2, None))


def _image_views(
    cfg: CaptionWorldConfig, k: Concepts, rng: np.random.Generator, labels: np.ndarray,
    vis: np.ndarray, n_views: int,
) -> np.ndarray:  # fmt: skip
    """Embeddings [n, n_views, d]; view 0 the centre crop, others drop attributes + noise."""
    s, n = cfg.sim, len(labels)
    base = (
        s.gap_image * k.m_img
        + s.family_weight * k.family_dirs[k.family[labels]]
        + s.identity_weight * k.identity[labels]
        + s.image_noise * noise(rng, (n,), s.d)
    )
    scale = s.attribute_weight / math.sqrt(s.attrs_per_class * s.p_show)
    out = np.empty((n, n_views, s.d))
    for v in range(n_views):
        keep = vis if v == 0 else vis * (rng.random(vis.shape) >= s.view_drop)
        x = base + scale * keep @ k.attr_img
        out[:, v] = x if v == 0 else x + s.view_noise * noise(rng, (n,), s.d)
    return normalize(out)


def _captions(
    cfg: CaptionWorldConfig, k: Concepts, rng: np.random.Generator, labels: np.ndarray,
    vis: np.ndarray, style: CaptionStyle,
) -> np.ndarray:  # fmt: skip
    """Caption embeddings [n, J, d] of each image."""
    s, n, j = cfg.sim, len(labels), cfg.captions_per_image
    p = np.minimum(vis, 1.0)[:, None, :] * style.p_mention
    said = rng.random((n, j, s.n_attributes)) < p
    slips = rng.poisson(style.slip_rate / s.n_attributes, said.shape) > 0
    said |= slips
    named = (rng.random((n, j)) < style.p_name)[..., None]
    t = (
        s.gap_text * k.m_txt
        + style.name_weight * named * k.names[labels][:, None, :]
        + style.attribute_weight * (said @ k.attr_txt) / math.sqrt(3)
        + style.noise * noise(rng, (n, j), s.d)
    )
    return normalize(t)


def _split(x: np.ndarray, captions: np.ndarray, prefix: str) -> CaptionSplit:
    n, views, d = x.shape
    j = captions.shape[1]
    ids = [f"{prefix}/{i:05d}" for i in range(n)]
    index = torch.arange(n).repeat_interleave(views)
    feats = FeatureSet(
        x=torch.from_numpy(x.reshape(-1, d).astype(np.float32)),
        labels=index.clone(),
        image_index=index,
        view=torch.arange(views).repeat(n),
        image_ids=ids,
    )
    bank = CaptionBank(
        image_ids=ids,
        texts=[f"{prefix}/{i:05d}#{c}" for i in range(n) for c in range(j)],
        caption_image=torch.arange(n).repeat_interleave(j),
        embeddings=torch.from_numpy(captions.reshape(-1, d).astype(np.float32)),
    )
    return CaptionSplit(feats, bank)


def simulate_captions(
    domain: str, config: CaptionWorldConfig | None = None, *, seed: int = 0
) -> dict[str, CaptionSplit]:
    """The train and test splits of one domain of the caption world. Same (config, seed):
    identical concepts in every domain, so domains differ only in scenes and caption habits."""
    if domain not in DOMAINS:
        raise UserError(f"domain: '{domain}' is not one of {', '.join(DOMAINS)}")
    cfg = config or CaptionWorldConfig()
    style = DOMAINS[domain]
    k = draw_concepts(cfg.sim, seed)
    which = list(DOMAINS).index(domain)
    mix = rng_stream(seed, _SCENES, which).dirichlet(np.full(cfg.sim.n_classes, style.class_alpha))
    out = {}
    for part, (split, n, views) in enumerate(
        (("train", cfg.train_images, cfg.sim.n_views), ("test", cfg.test_images, 1))
    ):
        rng = rng_stream(seed, _CAPTIONS, which, part)
        labels = rng.choice(cfg.sim.n_classes, n, p=mix)
        vis = _visible(cfg, k, rng, labels)
        x = _image_views(cfg, k, rng, labels, vis, views)
        out[split] = _split(x, _captions(cfg, k, rng, labels, vis, style), f"{domain}-{split}")
    return out
