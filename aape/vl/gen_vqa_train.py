"""Fine-tuning the prefix on VQAv2-format train pairs: the "fine-tuned" VQA protocol, beside
the zero/few-shot one of a caption-trained prefix (`aape.vl.gen_run`).

Each question is a (prompt, target) pair of its image for `train_prefix`: the LM reads
[prefix(x)] "Q: {question} A:" " {answer}" <eos>, with the next-token loss on the answer and
<eos>. The answer is the most common of the human answers (a tie goes to the one given first).
An image that is also in the caption dataset `captions` (matched by its resolved file path, as
the synthetic VQA files link the synthetic captions' images) adds lambda * L_distill + L_reward
against its captions; the others train on L_task alone. Features are cached on first use under
the question set's name, as for evaluation.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from aape.vl.bank import caption_bank, caption_store
from aape.vl.gen_config import GenConfig
from aape.vl.gen_run import Home, cached_lm, load_init, save_run, vqa_features
from aape.vl.gen_train import GenResult, Pair, TrainData, check_config, train_prefix
from aape.vl.vqa_data import VQASet
from prompt_banks.clip import CLIPRef, load_clip


def answer_target(answers: Sequence[str]) -> str:
    """The most common human answer; among equally common ones the one given first."""
    counts = Counter(answers)
    return max(answers, key=lambda a: counts[a])  # max keeps the first of equal keys


def vqa_pairs(vqa: VQASet, row: dict[str, int], n_images: int) -> list[list[Pair]]:
    """Per feature row, the ("Q: q A:", " answer") pairs of its image's questions."""
    pairs: list[list[Pair]] = [[] for _ in range(n_images)]
    for it in vqa.items:
        pairs[row[it.image]].append((f"Q: {it.question} A:", " " + answer_target(it.answers)))
    return pairs


def caption_rows(
    row: dict[str, int], x: torch.Tensor, home: Home, dataset: str | None, model_id: str
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The CLIP-embedded captions (bank [N, n, d], mask [N, n]) of the question images that are
    images of the caption dataset (any split), matched by resolved path; and how many are."""
    n_images = len(x)
    none = torch.zeros(n_images, 1, x.shape[1]), torch.zeros(n_images, 1, dtype=torch.bool), 0
    if dataset is None:
        return none
    store = caption_store(home)
    by_path = {os.path.realpath(p): image_id for image_id, _, p in store.images(dataset)}
    resolved = {p: os.path.realpath(p) for p in row}
    matched = {row[p]: by_path[r] for p, r in resolved.items() if r in by_path}
    if not matched:
        return none
    bank = caption_bank(
        store, dataset, model_id, splits=["train", "val", "test"], image_ids=list(matched.values())
    )
    padded, mask = bank.padded()
    where = {image_id: i for i, image_id in enumerate(bank.image_ids)}
    out = torch.zeros(n_images, padded.shape[1], padded.shape[2])
    out_mask = torch.zeros(n_images, padded.shape[1], dtype=torch.bool)
    for r, image_id in matched.items():
        out[r], out_mask[r] = padded[where[image_id]], mask[where[image_id]]
    return out, out_mask, len(matched)


def vqa_train_run(
    vqa: VQASet, clip_ref: CLIPRef, cfg: GenConfig, *, home: Home, out: str | os.PathLike[str],
    captions: str | None = None, progress: bool = True,
) -> tuple[GenResult, Path, dict[str, Any]]:  # fmt: skip
    """Train on the question set (from `cfg.init_from`'s weights when set); writes the run
    folder as `caption-train` does, marked as trained on VQA pairs."""
    check_config(cfg)
    init = load_init(cfg, clip_ref.model_id)
    clip = load_clip(clip_ref)
    x, row = vqa_features(vqa, clip, home, progress=progress)
    bank, mask, n_matched = caption_rows(row, x, home, captions, clip.model_id)
    data = TrainData(x, vqa_pairs(vqa, row, len(x)), bank, mask)
    lm = cached_lm(cfg.lm, cfg.device, cfg.lm_dtype)
    result = train_prefix(lm, data, cfg, init=init and init["state"], progress=progress)
    info = {
        "questions": vqa.name,
        "n_questions": len(vqa.items),
        "n_images": len(x),
        "caption_dataset": captions,
        "images_with_captions": n_matched,
    }
    folder = Path(out)
    save_run(result, folder, clip_ref, vqa.name, vqa_trained=True, init=init,
             extra={"vqa_train": info})  # fmt: skip
    return result, folder, info
