"""Evaluating a trained prefix: captions (CIDEr-D, CLIPScore, RefCLIPScore) and VQA answers
(VQAv2 accuracy, MAGMA's few-shot protocol) on cached CLIP features."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from aape.vl.caption_metrics import (
    CLIP_PROMPT,
    TokenizerName,
    cider_d,
    cider_d_by_group,
    clip_scores,
)
from aape.vl.generation import Decoding, decode
from aape.vl.lm import FrozenLM
from aape.vl.prefix import ImageSeg, PrefixModel, Segment, TextSeg, build_inputs
from aape.vl.vqa_data import VQAItem
from aape.vl.vqa_metrics import vqa_accuracy
from prompt_banks.clip import LoadedCLIP
from prompt_banks.embed import encode_texts

N_SAMPLES = 5  # captions / answers shown in the report


@dataclass
class DecodeOptions:
    decoding: Decoding = "greedy"
    beams: int = 3
    max_tokens: int = 20  # captions
    batch_size: int = 16


@torch.no_grad()
def _generate(
    lm: FrozenLM,
    model: PrefixModel,
    x: torch.Tensor,
    sequences: list[list[Segment]],
    limits: list[int],
    opts: DecodeOptions,
    desc: str,
) -> list[str]:
    """Texts generated after each sequence; its ImageSegs index the rows of x."""
    out: list[str] = []
    device = lm.device
    for start in tqdm(range(0, len(sequences), opts.batch_size), desc=desc, leave=False):
        batch = sequences[start : start + opts.batch_size]
        used = sorted({s.index for seq in batch for s in seq if isinstance(s, ImageSeg)})
        row = {old: new for new, old in enumerate(used)}
        prefixes, _ = model(x[used].to(device))
        local = [
            [ImageSeg(row[s.index]) if isinstance(s, ImageSeg) else s for s in seq] for seq in batch
        ]
        embeds, mask, _ = build_inputs(lm, prefixes, local, pad_left=True)
        out += decode(
            lm, embeds, mask, max_new_tokens=limits[start : start + opts.batch_size],
            decoding=opts.decoding, beams=opts.beams,
        )  # fmt: skip
    return out


def evaluate_captions(
    lm: FrozenLM,
    model: PrefixModel,
    x: torch.Tensor,
    image_ids: Sequence[str],
    references: Sequence[Sequence[str]],
    clip: LoadedCLIP,
    opts: DecodeOptions,
    tokenizer: TokenizerName = "auto",
    prompt: str = "",
    domains: dict[str, str] | None = None,
) -> dict[str, object]:
    """Captions for the images x [N, d] (after the training's caption prompt) and their scores
    against the references; `domains` (image id -> group, NoCaps) adds CIDEr-D per group."""
    seqs: list[list[Segment]] = [[ImageSeg(i), TextSeg(prompt)] for i in range(len(x))]
    captions = _generate(lm, model, x, seqs, [opts.max_tokens] * len(x), opts, "captions")
    keys = [str(i) for i in image_ids]
    refs_by_key = {k: list(r) for k, r in zip(keys, references, strict=True)}
    cands = dict(zip(keys, captions, strict=True))
    cider, per_image, used = cider_d(refs_by_key, cands, tokenizer)
    by_domain = cider_d_by_group(refs_by_key, cands, domains, used) if domains else {}
    cand = encode_texts(clip, [CLIP_PROMPT + c for c in captions]).embeddings
    flat = [r for refs in references for r in refs]
    owner = torch.tensor([i for i, refs in enumerate(references) for _ in refs])
    refs = encode_texts(clip, [CLIP_PROMPT + r for r in flat]).embeddings
    clip_s, ref_s = clip_scores(x, cand, refs, owner)
    samples = [
        {"image": keys[i], "caption": captions[i], "references": list(references[i])[:3]}
        for i in range(min(N_SAMPLES, len(keys)))
    ]
    return {
        "n_images": len(keys),
        "decoding": opts.decoding,
        "beams": opts.beams if opts.decoding == "beam" else 1,
        "max_tokens": opts.max_tokens,
        "tokenizer": used,
        "cider_d": cider,
        "cider_d_by_domain": by_domain,
        "clip_score": float(clip_s.mean()) if len(keys) else 0.0,
        "ref_clip_score": float(ref_s.mean()) if len(keys) else 0.0,
        "per_image_cider_d": per_image,
        "captions": dict(zip(keys, captions, strict=True)),
        "samples": samples,
    }


def vqa_sequence(item: VQAItem, row: dict[str, int], shots: Sequence[VQAItem]) -> list[Segment]:
    """MAGMA's few-shot prompt: K "[image] Q: q A: a" examples, then "[image] Q: q A:"."""
    seq: list[Segment] = []
    for s in shots:
        seq += [ImageSeg(row[s.image]), TextSeg(f"Q: {s.question} A: {s.answers[0]}\n")]
    return [*seq, ImageSeg(row[item.image]), TextSeg(f"Q: {item.question} A:")]


def pick_shots(item: VQAItem, support: Sequence[VQAItem], k: int, seed: int) -> list[VQAItem]:
    """K in-context examples drawn at random (seeded per question) from the support set, never
    the question itself."""
    pool = [s for s in support if s.question_id != item.question_id]
    return random.Random(f"{seed}:{item.question_id}").sample(pool, min(k, len(pool)))


def evaluate_vqa(
    lm: FrozenLM,
    model: PrefixModel,
    x: torch.Tensor,
    row: dict[str, int],
    items: Sequence[VQAItem],
    support: Sequence[VQAItem],
    shots: int,
    opts: DecodeOptions,
    seed: int = 0,
) -> dict[str, object]:
    """VQAv2 accuracy with `shots` in-context examples; x [n, d] holds every image that the
    questions and the support set use, `row` maps an image to its row. Each answer is cut to
    the longest ground-truth answer's length in LM tokens."""
    seqs = [vqa_sequence(it, row, pick_shots(it, support, shots, seed)) for it in items]
    limits = [max(len(lm.ids(" " + a)) for a in it.answers) for it in items]
    answers = _generate(lm, model, x, seqs, limits, opts, f"vqa {shots}-shot")
    scores = [vqa_accuracy(a, it.answers) for a, it in zip(answers, items, strict=True)]
    samples = [
        {"question": it.question, "answer": a, "truth": it.answers[0], "accuracy": s}
        for it, a, s in list(zip(items, answers, scores, strict=True))[:N_SAMPLES]
    ]
    return {
        "shots": shots,
        "n_questions": len(items),
        "accuracy": 100.0 * sum(scores) / max(len(scores), 1),
        "answers": {str(it.question_id): a for it, a in zip(items, answers, strict=True)},
        "samples": samples,
    }
