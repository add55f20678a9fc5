"""CLIP text embedding of a bank: batched, deduplicated by text hash, resumable.

The fast path: a plain `model.encode_text` loop pads every text to the 77-token context although
these descriptions average ~21 tokens. CLIP's text transformer is causal and pools at the
end-of-text token (the arg-max token id), so the tokens after it change nothing. So each text is
cut after its end-of-text token and several texts are packed into one 77-token row, each with
its own positions (0, 1, ...) and an attention mask that is causal *within* the text and closed
*between* texts: every text sees exactly what it sees alone, and the tower runs on ~1/3 of the
tokens in batches as large as before (small ragged batches are slow on CPUs). Equal to
`encode_text` to float rounding, checked once per loaded model on probe texts; any text tower
that is not this standard causal arg-max one goes through `encode_text`.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prompt_banks import snapshots
from prompt_banks.clip import LoadedCLIP
from prompt_banks.errors import UserError
from prompt_banks.schema import text_hash
from prompt_banks.store import BankStore

log = logging.getLogger(__name__)

TEMPLATE = "a photo of a {c}."
# Texts encoded between two store writes: a crash loses at most this much work.
CHUNK_SIZE = 4096
# The fast path must agree with encode_text to this much on a probe before it is trusted.
_PROBE_TOLERANCE = 1e-4
_PROBE_TEXTS = ["a photo of a cat.", "a long description of a bird " * 30, "x"]
_fast_path_ok: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


def template_text(class_name: str) -> str:
    """The one class template of the method, for every dataset: "a photo of a {c}."."""
    return TEMPLATE.format(c=class_name)


@dataclass
class EncodedTexts:
    embeddings: torch.Tensor  # [N, d] float32, L2-normalised, on the CPU, in input order
    n_tokens: list[int]  # tokens incl. start/end, before truncation to the context
    truncated: list[bool]  # longer than the context: CLIP saw only the first tokens


@dataclass
class EmbedReport:
    domain: str
    model_id: str
    texts: int  # distinct usable texts of the domain (+ one template per class)
    already: int  # embedded by an earlier run, skipped
    encoded: int
    truncated: int  # of the encoded ones
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_standard_text_tower(clip: LoadedCLIP) -> bool:
    """Whether the model is open_clip's built-in causal text transformer pooled at the arg-max
    (end-of-text) token with open_clip's BPE tokenizer and nn.MultiheadAttention blocks: the
    case the packed path reproduces."""
    import open_clip

    m = clip.model
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    if not all(getattr(m, a, None) is not None for a in needed):
        return False
    blocks = getattr(m.transformer, "resblocks", None)
    return (
        getattr(m, "text_pool_type", "argmax") == "argmax"
        and isinstance(clip.tokenizer, open_clip.tokenizer.SimpleTokenizer)
        and hasattr(m.transformer, "get_cast_dtype")
        and bool(blocks)
        and all(isinstance(getattr(b, "attn", None), torch.nn.MultiheadAttention) for b in blocks)
    )


def _pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: text indices grouped into rows whose lengths sum to <= capacity."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


def _packed_forward(model: Any, tokens: torch.Tensor, capacity: int) -> torch.Tensor:
    """`model.encode_text(tokens, normalize=True)`, running only each text's tokens up to its
    end-of-text, several texts to a row. `tokens` [N, ctx] as the tokenizer made them."""
    device = tokens.device
    lengths = (tokens.argmax(dim=-1) + 1).tolist()  # the end-of-text token is the arg-max id
    rows = _pack(lengths, capacity)
    width = max(sum(lengths[i] for i in row) for row in rows)
    n_rows = len(rows)
    tok = torch.zeros(n_rows, width, dtype=tokens.dtype)
    pos = torch.zeros(n_rows, width, dtype=torch.long)
    # Segment of each slot; a padding slot gets a segment of its own (it attends to itself
    # only, so no row of the softmax is empty and no NaN appears).
    seg = torch.arange(width).repeat(n_rows, 1) + len(lengths)
    eot = torch.zeros(len(lengths), 2, dtype=torch.long)
    cpu_tokens = tokens.cpu()
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            n = lengths[i]
            tok[r, offset : offset + n] = cpu_tokens[i, :n]
            pos[r, offset : offset + n] = torch.arange(n)
            seg[r, offset : offset + n] = i
            eot[i] = torch.tensor([r, offset + n - 1])
            offset += n
    causal = torch.ones(width, width, dtype=torch.bool).tril()  # [query, key]
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal
    mask = torch.zeros(n_rows, width, width).masked_fill_(~allowed, float("-inf"))
    heads = model.transformer.resblocks[0].attn.num_heads
    mask = mask.repeat_interleave(heads, dim=0).to(device)  # [rows * heads, L, L]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tok.to(device)).to(cast)
    x = x + model.positional_embedding[pos.to(device)].to(cast)
    x = model.transformer(x, attn_mask=mask.to(cast))
    x = model.ln_final(x)
    x = x[eot[:, 0].to(device), eot[:, 1].to(device)]
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return F.normalize(x.float(), dim=-1)


def _reference_forward(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.encode_text(tokens).float(), dim=-1)


def _use_fast_path(clip: LoadedCLIP) -> bool:
    """The structural check, then a one-time probe against encode_text per loaded model."""
    if clip.model in _fast_path_ok:
        return _fast_path_ok[clip.model]
    ok = _is_standard_text_tower(clip)
    if ok:
        tokens = clip.tokenizer(_PROBE_TEXTS).to(clip.device)
        with torch.inference_mode():
            full = _reference_forward(clip.model, tokens)
            fast = _packed_forward(clip.model, tokens, clip.context_length)
        ok = bool((full - fast).abs().max() <= _PROBE_TOLERANCE)
    if not ok:
        log.info(
            "CLIP %s: text tower is not the standard causal one; using encode_text", clip.model_id
        )
    _fast_path_ok[clip.model] = ok
    return ok


def _token_counts(clip: LoadedCLIP, texts: Sequence[str], tokens: torch.Tensor) -> list[int]:
    """Tokens per text incl. start/end, counted before truncation to the context."""
    eot = getattr(clip.tokenizer, "eot_token_id", None)
    if eot is not None:  # up to and including the end-of-text token
        counts = ((tokens == eot).int().argmax(dim=-1) + 1).tolist()
    else:
        pad = int(getattr(clip.tokenizer, "pad_token_id", 0) or 0)
        counts = (tokens != pad).sum(dim=-1).tolist()
    encode = getattr(clip.tokenizer, "encode", None)
    for i, n in enumerate(counts):
        if n >= clip.context_length and encode is not None:
            counts[i] = len(encode(texts[i])) + 2  # the tokenizer cut it: count the whole text
    return counts


def encode_texts(
    clip: LoadedCLIP,
    texts: list[str],
    batch_size: int = 256,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> EncodedTexts:
    """Embed `texts` with CLIP's text tower (L2-normalised float32 [N, d], input order).
    `on_batch(n)` is called after each batch of n texts (progress bars)."""
    if batch_size < 1:
        raise UserError(f"batch size: {batch_size} must be at least 1")
    if not texts:
        return EncodedTexts(torch.zeros(0, clip.dim), [], [])
    fast = _use_fast_path(clip)
    tokens = clip.tokenizer(list(texts))
    n_tokens = _token_counts(clip, texts, tokens)
    out = torch.empty(len(texts), clip.dim, dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokens[start : start + batch_size]
            if fast:
                emb = _packed_forward(clip.model, batch, clip.context_length)
            else:
                emb = _reference_forward(clip.model, batch.to(clip.device))
            out[start : start + len(batch)] = emb.cpu()
            if on_batch is not None:
                on_batch(len(batch))
    truncated = [n > clip.context_length for n in n_tokens]
    return EncodedTexts(out, n_tokens, truncated)


def embed_texts_to_rows(
    clip: LoadedCLIP,
    texts: Sequence[str],
    batch_size: int = 256,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Embedding-table rows for `texts` (deduplicated), ready for `BankStore.append_embeddings`.
    Stateless, so a shard of a bank can run in any worker."""
    unique = list(dict.fromkeys(texts))
    enc = encode_texts(clip, unique, batch_size, on_batch=on_batch)
    vectors = enc.embeddings.numpy()
    return [
        {
            "text_hash": text_hash(t),
            "model_id": clip.model_id,
            "dim": clip.dim,
            "embedding": vectors[i],
            "n_tokens": enc.n_tokens[i],
            "truncated": enc.truncated[i],
        }
        for i, t in enumerate(unique)
    ]


def domain_texts(store: BankStore, domain: str) -> list[str]:
    """Everything of a domain that gets a text embedding: each distinct usable description and
    the template of each class."""
    from prompt_banks.queries import class_texts

    by_class = class_texts(store, domain)
    if not by_class:
        raise UserError(
            f"domain: '{domain}' has no usable descriptions in {store.root}; import or generate it"
        )
    texts = [t for ts in by_class.values() for t in ts]
    texts += [template_text(c) for c in by_class]
    return list(dict.fromkeys(texts))


def pending_texts(store: BankStore, texts: Sequence[str], model_id: str) -> list[str]:
    """The texts not yet embedded for `model_id`."""
    done = store.embedded_hashes(model_id)
    return [t for t in dict.fromkeys(texts) if text_hash(t) not in done]


def embed_domain(
    store: BankStore,
    domain: str,
    clip: LoadedCLIP,
    *,
    batch_size: int = 256,
    progress: bool = True,
) -> EmbedReport:
    """Embed every text of `domain` not yet embedded for this CLIP; a second run encodes
    nothing. Writes one store file per chunk, so an interrupted run resumes where it stopped."""
    store.check_model_dim(clip.model_id, clip.dim)  # refuse before any work
    texts = domain_texts(store, domain)
    report = embed_missing(
        store, texts, clip, label=domain, batch_size=batch_size, progress=progress
    )
    snapshots.take(store, domain, clip.model_id)  # the bank as training will read it
    return report


def embed_missing(
    store: BankStore,
    texts: Sequence[str],
    clip: LoadedCLIP,
    *,
    label: str,
    batch_size: int = 256,
    progress: bool = True,
) -> EmbedReport:
    """Embed the distinct `texts` not yet embedded for this CLIP (`label` names them in the
    report and the progress bar: a domain, a caption dataset). One store file per chunk."""
    started = time.perf_counter()
    store.check_model_dim(clip.model_id, clip.dim)
    texts = list(dict.fromkeys(texts))
    todo = pending_texts(store, texts, clip.model_id)
    truncated = 0
    with tqdm(
        total=len(todo), disable=not progress or not todo, unit="text", desc=f"embed {label}"
    ) as bar:
        for start in range(0, len(todo), CHUNK_SIZE):
            rows = embed_texts_to_rows(
                clip, todo[start : start + CHUNK_SIZE], batch_size, on_batch=bar.update
            )
            truncated += sum(r["truncated"] for r in rows)
            store.append_embeddings(rows)
    return EmbedReport(
        domain=label,
        model_id=clip.model_id,
        texts=len(texts),
        already=len(texts) - len(todo),
        encoded=len(todo),
        truncated=truncated,
        seconds=round(time.perf_counter() - started, 3),
    )


def encode_image_file(clip: LoadedCLIP, path: str | Path) -> torch.Tensor:
    """The L2-normalised CLIP embedding [d] of one image file."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"image: {p} does not exist; pass an image file")
    try:
        with Image.open(p) as im:
            pixels = clip.preprocess_val(im.convert("RGB")).unsqueeze(0).to(clip.device)
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"image: {p} is not a readable image ({exc.__class__.__name__})") from exc
    with torch.inference_mode():
        return F.normalize(clip.model.encode_image(pixels).float(), dim=-1)[0].cpu()


def text_vector(clip: LoadedCLIP, text: str) -> np.ndarray:
    """The L2-normalised embedding of one text (queries)."""
    return encode_texts(clip, [text]).embeddings[0].numpy()
