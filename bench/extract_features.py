"""Feature-extraction speed: images/s of the cache's shard function on real textile JPEGs.

    .venv/bin/python bench/extract_features.py [--images 100] [--views 0] [--threads N] [--skip-vit]

Two towers: `aape-tiny` (the project's random d=64, 64-px config) and open_clip's real ViT-B-16
architecture with random weights (same FLOPs as the pretrained one; hub weights are not
reachable here, so it is built directly with open_clip.create_model instead of load_clip).
Prints images/s and feature rows/s; no assert: speed depends on the machine.
"""

from __future__ import annotations

import argparse
import time

import open_clip
import torch

from aape.datasets import load_dataset
from aape.features import compute_feature_rows, views_for
from prompt_banks.clip import CLIPRef, LoadedCLIP, load_clip, resolve_device


def vit_b16_random(device: torch.device) -> LoadedCLIP:
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, device=device).eval()
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    return LoadedCLIP(
        ref=CLIPRef("ViT-B-16"),
        model=model,
        tokenizer=None,
        preprocess_train=None,
        preprocess_val=preprocess,
        dim=int(model.text_projection.shape[1]),
        context_length=77,
        untrained=True,
        device=device,
    )


def bench(clip: LoadedCLIP, records, views: int, batch_size: int) -> None:
    jobs = [(r, views_for("train" if views else "test", views)) for r in records]
    compute_feature_rows(
        jobs[:2], clip, dataset="bench", batch_size=batch_size, progress=False
    )  # warm-up
    start = time.perf_counter()
    shard = compute_feature_rows(jobs, clip, dataset="bench", batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    print(
        f"{clip.model_id:28s} images={shard.images:5d} rows={shard.table.num_rows:6d} "
        f"seconds={seconds:7.2f} images/s={shard.images / seconds:8.1f} "
        f"rows/s={shard.table.num_rows / seconds:8.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument(
        "--views", type=int, default=0, help="augmented views per image (0: centre crop only)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        # On a loaded shared CPU, more threads than free cores spin and run many times slower.
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    records = load_dataset("textile-defects").splits["train"][: args.images]
    print(
        f"device={device} threads={torch.get_num_threads()} images={len(records)} "
        f"(250x250 JPEG) views={args.views}"
    )
    bench(load_clip(CLIPRef("aape-tiny"), device=device), records, args.views, args.batch_size)
    if not args.skip_vit:
        bench(vit_b16_random(device), records, args.views, args.batch_size)


if __name__ == "__main__":
    main()
