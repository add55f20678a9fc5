"""Benchmark: what identifying CLIP weights by content costs, next to loading them.

A ViT-B-16-sized state dict with random weights (open_clip's ViT-B-16 architecture), saved as
`.safetensors` and as a `.pt` state dict. In one run, for each file:
- "read": `read_state_dict` (the file into tensors);
- "digest": `tensor_digest` over the tensors read (sha256 of names, dtypes, shapes, values);
- "cold id": `weights_digest` with an empty cache (read + digest + cache write);
- "warm id": `weights_digest` again (the cache, keyed by path, size and mtime);
- "load": `load_clip` of the same file (architecture built, weights loaded; digest cached).
It prints seconds and the ratios cold/warm and digest/load.

    .venv/bin/python bench/weights_digest.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from prompt_banks.clip import CLIPRef, load_clip
from prompt_banks.clip_weights import read_state_dict, tensor_digest, weights_digest


def _timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")  # an empty digest cache
        torch.manual_seed(0)
        sd = open_clip.create_model("ViT-B-16").state_dict()
        n = sum(t.numel() for t in sd.values())
        files = {"safetensors": Path(tmp) / "vit.safetensors", "pt": Path(tmp) / "vit.pt"}
        save_file({k: v.contiguous() for k, v in sd.items()}, str(files["safetensors"]))
        torch.save(sd, files["pt"])
        del sd
        print(f"ViT-B-16 state dict: {n / 1e6:.1f} M values, float32")
        for kind, path in files.items():
            state, read = _timed(lambda p=path: read_state_dict(p))
            _, digest = _timed(lambda s=state: tensor_digest(s))
            del state
            _, cold = _timed(lambda p=path: weights_digest(p))
            _, warm = _timed(lambda p=path: weights_digest(p))
            _, load = _timed(lambda p=path: load_clip(CLIPRef("ViT-B-16", str(p)), device="cpu"))
            mb = path.stat().st_size / 2**20
            print(
                f"{kind:12s} {mb:6.0f} MB  read {read:6.2f} s  digest {digest:6.2f} s  "
                f"cold id {cold:6.2f} s  warm id {warm:7.4f} s  load {load:6.2f} s  "
                f"cold/warm {cold / warm:7.0f}x  digest/load {digest / load:5.2f}"
            )


if __name__ == "__main__":
    main()
