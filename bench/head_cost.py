"""Per-image cost of the AAPE head vs the zero-shot head (x @ W.T), d = 512.

The AAPE head uses the precomputation (A w_c and the QR form of ||w_c(x)|| once per class list,
then on CPU one fused kernel, x / ||x||, h(x) and 1 / tau included: O(C (d + r^2 / 2)) per image);
the naive head materialises w_c(x) for every class (O(C r d) per image) and is shown for scale.
Goal: AAPE head at most 3x the zero-shot head at C = 1000.

    .venv/bin/python bench/head_cost.py [--batch 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from aape.config import TrainConfig
from aape.model import AAPE


def per_image_us(fn, n_images: int, min_seconds: float = 0.3) -> float:
    fn()  # warm-up
    reps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or reps < 3:
        fn()
        reps += 1
    return 1e6 * elapsed / (reps * n_images)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256, help="images per call")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d = args.dim
    model = AAPE(d, TrainConfig()).eval()
    for p in model.parameters():  # trained-looking weights (the zero init would be a shortcut)
        p.data.normal_(0, 0.05)
    r, rh = model.g.last.weight.shape[1], model.h.net[0].out_features
    # Multiply-adds per (image, class): zero-shot d; AAPE x.w0 (d), R u (r (r + 1) / 2, R
    # triangular), u . W2^T x, ||s0 + R u||^2 and relu(pre + B h) (~3r). Per image ||x||^2 (d),
    # W_h1 x (d r'), W2^T x (d r) and B h = (B W_h2) relu(.) + B b_h2 (r r').
    floor = (d + r * (r + 1) / 2 + 3 * r) / d
    per_image = (d + d * rh + d * r + r * rh) / d
    print(
        f"d={d} r={r} batch={args.batch} threads={torch.get_num_threads()} (both heads) "
        f"(microseconds per image); arithmetic floor of the ratio {floor:.2f}x + {per_image:.0f}/C"
    )
    print(f"{'C':>6} {'zero-shot':>10} {'aape':>10} {'ratio':>6} {'naive':>10} {'naive ratio':>11}")
    for c in (10, 100, 1000):
        for batch in (args.batch, 1):
            x = F.normalize(torch.randn(batch, d), dim=-1)
            w = F.normalize(torch.randn(c, d), dim=-1)
            cache = model.g.prepare(w)  # once per class list, not per image
            zs = per_image_us(lambda x=x, w=w: x @ w.T / 0.01, batch)
            aape = per_image_us(lambda x=x, cache=cache: model.logits(x, cache), batch)
            line = f"{c:>6} {zs:>10.2f} {aape:>10.2f} {aape / zs:>6.1f}"
            if batch == args.batch and c <= 1000 and batch * c <= 256_000:
                naive = per_image_us(
                    lambda x=x, w=w: F.cosine_similarity(
                        x.unsqueeze(1), model.g.explicit(w, model.h(x)), dim=-1
                    ),
                    batch,
                )
                line += f" {naive:>10.2f} {naive / zs:>11.1f}"
            print(line + ("" if batch == args.batch else "   (batch 1)"))


if __name__ == "__main__":
    main()
