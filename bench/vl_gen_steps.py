"""Captioning prefix training: steps/s on cached CLIP features against encoding every batch's
images through CLIP's image tower (what training without the feature cache does), side by side
in one run, with the frozen LM. Both are `aape.vl.gen_train.train_prefix`, the same seeds and
batches; the second passes `batch_features` = CLIP's image tower on preprocessed pixels (JPEG
decoding and resizing, which uncached training would also pay, are left out: the ratio is a
lower bound).

    .venv/bin/python bench/vl_gen_steps.py [--device cpu|cuda] [--steps 6] [--batch 8]
        [--clip-model aape-tiny | ViT-B-16 (an open_clip architecture, random weights: the
        real tower's cost without its weights, which this offline machine lacks)]
        [--lm smollm2] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from PIL import Image

from aape.vl.gen_config import GenConfig
from aape.vl.gen_train import caption_data, train_prefix
from aape.vl.lm import load_lm
from prompt_banks.clip import CLIPRef, load_clip

CLASSES = ["cat", "dog", "owl", "fox", "bear", "horse", "frog", "crab"]


def image_tower(name: str, device: torch.device) -> tuple[torch.nn.Module, object]:
    """(the CLIP model, its eval preprocessing): aape-tiny through `load_clip`, any other
    open_clip architecture built with random weights (the compute of the trained one)."""
    if name == "aape-tiny":
        clip = load_clip(CLIPRef(name), device=device)
        return clip.model, clip.preprocess_val
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
    return model.eval().requires_grad_(False), preprocess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--clip-model", default="aape-tiny")
    ap.add_argument("--lm", default="smollm2")
    ap.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (0: torch's)")
    args = ap.parse_args()
    device = torch.device(args.device)

    start = time.perf_counter()
    lm = load_lm(args.lm, device=device)
    print(f"LM {args.lm} loaded on {device} in {time.perf_counter() - start:.0f} s (dim {lm.dim})")
    clip, preprocess = image_tower(args.clip_model, device)
    images = [
        Image.new("RGB", (96, 96), (i * 37 % 255, i * 11 % 255, i * 5 % 255))
        for i in range(args.images)
    ]
    pixels = torch.stack([preprocess(im) for im in images]).to(device)  # type: ignore[operator]
    captions = [[f"a photo of a {CLASSES[i % len(CLASSES)]}."] for i in range(args.images)]
    with torch.no_grad():
        cached = clip.encode_image(pixels).float()
    # The captions' CLIP embeddings only feed p_a: random unit vectors cost the same.
    gen = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(args.images, 1, cached.shape[1], generator=gen), dim=-1)
    mask = torch.ones(args.images, 1, dtype=torch.bool)
    cfg = GenConfig(steps=args.steps, batch_size=args.batch, device=str(device),
                    cpu_threads=args.threads, aggregator_heads=4)  # fmt: skip
    data = caption_data(cached.cpu(), captions, bank, mask, cfg.caption_prompt)

    @torch.no_grad()
    def encode(idx: torch.Tensor) -> torch.Tensor:
        return clip.encode_image(pixels.index_select(0, idx))

    warm = cfg.model_copy(update={"steps": 1})
    train_prefix(lm, data, warm, progress=False)  # first-call costs out of both timings
    train_prefix(lm, data, warm, batch_features=encode, progress=False)
    rates = {}
    for name, hook in (("cached features", None), ("CLIP every step", encode)):
        result = train_prefix(lm, data, cfg, batch_features=hook, progress=False)
        rates[name] = result.steps_per_s
        print(f"{name:>16}: {result.steps_per_s:.3f} steps/s ({args.steps} steps, batch "
              f"{args.batch}, {args.clip_model}, {args.lm}, {device})")  # fmt: skip
    ratio = rates["cached features"] / rates["CLIP every step"]
    print(f"cached / CLIP every step: {ratio:.2f}x")


if __name__ == "__main__":
    main()
