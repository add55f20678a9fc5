"""Benchmark: embedding the public banks through the store vs a plain `encode_text` loop.

Same texts, same model, same batch size, in one run:
- "store": `prompt_banks.embed.embed_domain` (length-sorted batches cut after the longest text,
  dedup by hash, writes to the Parquet store), as `aape bank embed` runs it;
- "plain": `model.encode_text(tokenizer(batch))` over batches padded to 77 tokens.
It prints texts/s of both, their ratio, the largest difference between the two embeddings, and
the time of a second (no-op) store run as a share of the first.

The real ViT-B-16 architecture with random weights (the speed is that of the pretrained model).

    .venv/bin/python bench/embed_bank.py --limit 1500
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from prompt_banks.clip import CLIPRef, LoadedCLIP, register_project_models, resolve_device
from prompt_banks.embed import domain_texts, embed_domain
from prompt_banks.importers import import_file
from prompt_banks.schema import text_hash
from prompt_banks.store import BankStore
from prompt_banks.text import split_fused

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "prompt_banks"


def random_clip(name: str, device: str | None) -> LoadedCLIP:
    dev = resolve_device(device)
    register_project_models()  # so that --model aape-tiny works too
    torch.manual_seed(0)
    model, _, val = open_clip.create_model_and_transforms(name, device=dev)
    model.eval()
    return LoadedCLIP(
        ref=CLIPRef(name),
        model=model,
        tokenizer=open_clip.get_tokenizer(name),
        preprocess_train=val,
        preprocess_val=val,
        dim=int(model.text_projection.shape[1]),
        context_length=77,
        untrained=True,
        device=dev,
    )


def sample_bank(limit: int | None, seed: int) -> dict[str, list[str]]:
    """A CuPL-style bank of whole classes drawn at random from every shared file, about
    `limit` distinct sentences in all (a class keeps its 5-90 sentences, as in real use)."""
    classes: list[tuple[str, list[str]]] = []
    for f in sorted(SHARED.glob("*/*.json")):
        for cls, texts in json.loads(f.read_text()).items():
            pieces = [p for t in texts for p in split_fused(t)]
            if pieces:
                classes.append((f"{f.parent.name}/{f.stem}/{cls}", pieces))
    random.Random(seed).shuffle(classes)
    bank: dict[str, list[str]] = {}
    seen: set[str] = set()
    for cls, pieces in classes:
        if limit is not None and len(seen) >= limit:
            break
        fresh = [p for p in dict.fromkeys(pieces) if p not in seen]
        bank[cls] = fresh
        seen.update(fresh)
    return {c: ts for c, ts in bank.items() if ts}


def plain_loop(clip: LoadedCLIP, texts: list[str], batch_size: int) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            tokens = clip.tokenizer(texts[s : s + batch_size]).to(clip.device)
            out.append(F.normalize(clip.model.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--limit", type=int, default=None, help="number of sentences (default: all)")
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--batch-size", type=int, default=256)  # embed_domain's default
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    clip = random_clip(args.model, args.device)
    print(
        f"model {args.model} (random weights), device {clip.device}, "
        f"torch threads {torch.get_num_threads()}, batch {args.batch_size}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        bank_file = Path(tmp) / "bank.json"
        bank_file.write_text(json.dumps(sample_bank(args.limit, args.seed)))
        store = BankStore(Path(tmp) / "banks")
        import_file(store, bank_file, domain="bench", fmt="cupl")
        texts = domain_texts(store, "bench")
        n_tok = [len(clip.tokenizer.encode(t)) + 2 for t in texts]
        print(
            f"{len(texts)} texts (descriptions + one template per class), "
            f"mean {np.mean(n_tok):.1f} tokens, {sum(n > 77 for n in n_tok)} over 77"
        )

        plain_loop(clip, texts[:8], 8)  # warm-up, both paths
        # CPU seconds too: on a shared machine they move less with the load than wall time.
        t, c = time.perf_counter(), time.process_time()
        plain = plain_loop(clip, texts, args.batch_size)
        t_plain, c_plain = time.perf_counter() - t, time.process_time() - c

        t, c = time.perf_counter(), time.process_time()
        first = embed_domain(store, "bench", clip, batch_size=args.batch_size, progress=False)
        t_store, c_store = time.perf_counter() - t, time.process_time() - c
        assert first.encoded == len(texts)
        t = time.perf_counter()
        second = embed_domain(store, "bench", clip, batch_size=args.batch_size, progress=False)
        t_noop = time.perf_counter() - t
        assert second.encoded == 0

        with store.connect() as con:
            stored = dict(con.execute("SELECT text_hash, embedding FROM embeddings").fetchall())
        ours = torch.tensor(np.array([stored[text_hash(x)] for x in texts], dtype=np.float32))
        diff = float((ours - plain).abs().max())

    n = len(texts)
    for label, wall, cpu in (
        ("plain encode_text loop", t_plain, c_plain),
        ("store (embed_domain)  ", t_store, c_store),
    ):
        print(f"{label}: {n / wall:8.1f} texts/s ({wall:.1f} s, {cpu:.1f} CPU s)")
    print(f"ratio store/plain:      {t_plain / t_store:8.2f}x wall, {c_plain / c_store:.2f}x CPU")
    print(f"max |difference|:       {diff:.2e}")
    print(f"no-op second run:       {t_noop:.3f} s = {100 * t_noop / t_store:.2f}% of the first")


if __name__ == "__main__":
    main()
