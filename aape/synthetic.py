"""Small random Tasks with class structure, for tests and benchmarks (not a CLIP simulation).

Each class has an image prototype; images are noisy prototypes (several views per training
image), templates and prompts are noisy copies shifted by a shared "modality gap" vector.
`prompt_signal=0` makes the prompts carry no information about their class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aape.data import ClassTexts, FeatureSet, Task


def _features(
    protos: torch.Tensor, per_class: int, views: int, noise: float, gen: torch.Generator
) -> FeatureSet:
    n_classes, dim = protos.shape
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    base = protos[labels] + noise * torch.randn(len(labels), dim, generator=gen) / dim**0.5
    x = base.repeat_interleave(views, 0)
    x = F.normalize(x + 0.3 * noise * torch.randn(x.shape, generator=gen) / dim**0.5, dim=-1)
    n_img = len(labels)
    return FeatureSet(
        x=x,
        labels=labels.repeat_interleave(views),
        image_index=torch.arange(n_img).repeat_interleave(views),
        view=torch.arange(views).repeat(n_img),
        image_ids=[f"img{i}" for i in range(n_img)],
    )


def make_task(
    *,
    n_classes: int = 10,
    dim: int = 64,
    shots: int = 4,
    views: int = 2,
    n_test: int = 10,
    n_prompts: int = 12,
    image_noise: float = 1.5,
    text_noise: float = 1.0,
    prompt_signal: float = 1.0,
    seed: int = 0,
    name: str = "synthetic",
) -> Task:
    gen = torch.Generator().manual_seed(seed)
    protos = F.normalize(torch.randn(n_classes, dim, generator=gen), dim=-1)
    gap = F.normalize(torch.randn(dim, generator=gen), dim=0)

    def text(signal: torch.Tensor) -> torch.Tensor:
        noise = text_noise * torch.randn(signal.shape, generator=gen) / dim**0.5
        return F.normalize(signal + noise + 0.5 * gap, dim=-1)

    templates = text(protos)
    other = F.normalize(torch.randn(n_classes, n_prompts, dim, generator=gen), dim=-1)
    signal = prompt_signal * protos.unsqueeze(1) + (1 - min(prompt_signal, 1.0)) * other
    bank = text(signal.expand(n_classes, n_prompts, dim).clone())
    # Variable bank sizes: class c keeps n_prompts - (c % 3) prompts, the rest is padding.
    mask = torch.arange(n_prompts).unsqueeze(0) < (
        n_prompts - torch.arange(n_classes) % 3
    ).unsqueeze(1)
    bank = bank * mask.unsqueeze(-1)
    return Task(
        name=name,
        texts=ClassTexts([f"class {c}" for c in range(n_classes)], templates, bank, mask),
        train=_features(protos, shots, views, image_noise, gen),
        test=_features(protos, n_test, 1, image_noise, gen),
        model_id="synthetic/none",
    )
