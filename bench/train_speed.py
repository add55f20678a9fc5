"""Training speed on cached features.

1. Cached vs recomputing: the same AAPE training loop on `aape-tiny` features, once reading the
   cached features and once running the image tower on every batch (what training without the
   cache does); ratio of time per step.
2. Wall time of a 16-shot, 100-class, 200-epoch run (CoOp recipe, batch 32) on synthetic d=512
   features with 16 views per image and 50 prompts per class. Goal: under 60 s on this CPU.

    .venv/bin/python bench/train_speed.py [--skip-recompute] [--epochs 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from PIL import Image

from aape.config import TrainConfig
from aape.model import AAPE, class_embeddings
from aape.synthetic import make_task
from aape.train import train
from aape.updates import Updates


def bench_full_run(epochs: int, batch: int) -> None:
    task = make_task(n_classes=100, dim=512, shots=16, views=16, n_test=5, n_prompts=50, seed=0)
    cfg = TrainConfig(epochs=epochs, batch_size=batch)
    start = time.perf_counter()
    result = train(task, cfg, progress=False)
    wall = time.perf_counter() - start
    steps = epochs * -(-1600 // batch)
    print(
        f"16-shot x 100 classes, {epochs} epochs, batch {batch} ({steps} steps), d=512, "
        f"50 prompts/class: wall {wall:.1f} s (loop {result.train_seconds:.1f} s, "
        f"{1e3 * result.train_seconds / steps:.2f} ms/step); goal < 60 s"
    )


def bench_recompute(steps: int) -> None:
    from prompt_banks.clip import CLIPRef, load_clip

    clip = load_clip(CLIPRef("aape-tiny"), device="cpu")
    n_classes, shots, batch = 10, 4, 32
    images = [
        Image.new("RGB", (80, 80), (i * 20 % 255, i * 7 % 255, i * 3 % 255))
        for i in range(n_classes * shots)
    ]
    pixels = torch.stack([clip.preprocess_train(im) for im in images])
    with torch.no_grad():
        cached = F.normalize(clip.model.encode_image(pixels).float(), dim=-1)
    task = make_task(n_classes=n_classes, dim=clip.dim, shots=shots, views=1, seed=0)
    task.train.x = cached
    cfg = TrainConfig(recipe="adamw", warmup_epochs=0, aggregator_heads=4)
    bank, mask = task.texts.bank, task.texts.bank_mask
    model = AAPE(clip.dim, cfg, bank, mask)
    gen = torch.Generator().manual_seed(0)
    updates = Updates(model, cfg, bank, mask, class_embeddings(task.texts, "template"), gen)
    y_all = task.train.labels

    def step(recompute: bool) -> None:
        rows = torch.randint(0, len(images), (batch,), generator=gen)
        if recompute:  # the image tower on every batch, as without the cache
            with torch.no_grad():
                x = F.normalize(clip.model.encode_image(pixels[rows]).float(), dim=-1)
        else:
            x = cached[rows]
        p_a, _ = updates.teacher(x, y_all[rows])
        updates.student(x, y_all[rows], p_a)

    times = {}
    for recompute in (False, True):
        step(recompute)
        start = time.perf_counter()
        for _ in range(steps):
            step(recompute)
        times[recompute] = (time.perf_counter() - start) / steps
    print(
        f"aape-tiny (64 px, d={clip.dim}), batch {batch}: cached {1e3 * times[False]:.2f} ms/step, "
        f"recomputing image features {1e3 * times[True]:.2f} ms/step: "
        f"{times[True] / times[False]:.1f}x faster with the cache (ViT-B/16 at 224 px: far more)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--steps", type=int, default=30, help="steps for the cached/recompute ratio"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-recompute", action="store_true")
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_recompute:
        bench_recompute(args.steps)
    if not args.skip_full:
        bench_full_run(args.epochs, args.batch)


if __name__ == "__main__":
    main()
