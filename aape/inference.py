"""Classify images into any list of class names with CLIP + an AAPE artifact. No LLM, no bank.

clf = AAPEClassifier.load("artifacts/textile")
clf.predict(["a.png", "b.png"], ["hole", "stain", "good"])  # -> [Prediction, ...]
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from aape.artifact import BANK_MEANS_KEY, needs_bank_means, read_artifact
from aape.config import TrainConfig
from aape.model import AAPE, HeadCache
from prompt_banks.clip import CLIPRef, LoadedCLIP, is_model_id_of, load_clip
from prompt_banks.errors import UserError
from prompt_banks.text import canonical_class_name

CLASS_LISTS_KEPT = 8  # class lists whose embeddings and prepared head a classifier keeps


@dataclass
class _ClassList:
    w: torch.Tensor  # [C, d] class embeddings on the model's device
    head: HeadCache  # the head prepared for them
    versions: tuple[int, ...]  # the model's parameter versions `head` was prepared from


@dataclass
class Prediction:
    label: str  # the top-1 class name
    score: float  # its softmax probability among the given classes
    top_k: list[tuple[str, float]]  # (class name, probability), best first

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "score": self.score,
            "top_k": [{"label": n, "score": s} for n, s in self.top_k],
        }


class AAPEClassifier:
    def __init__(
        self,
        model: AAPE,
        meta: dict[str, Any],
        bank_means: dict[str, torch.Tensor],
        clip: LoadedCLIP | None = None,
    ) -> None:
        self.model = model.eval()
        self.meta = meta
        self.config = TrainConfig(**meta["config"])
        self.bank_means = bank_means
        self._canonical = {canonical_class_name(n): n for n in bank_means}
        self._clip = clip
        self._params = list(self.model.parameters())  # listing them per call costs ~12 us
        self._class_lists: OrderedDict[tuple[str, ...], _ClassList] = OrderedDict()

    @classmethod
    def load(
        cls, folder: str | Path, clip: LoadedCLIP | None = None, device: str | None = "cpu"
    ) -> AAPEClassifier:
        """Load an artifact; `clip` (else loaded from the artifact's CLIP reference on first use)
        must be the CLIP the artifact was trained with: same model id, same dimension."""
        meta, tensors = read_artifact(folder)
        if clip is not None:
            check_clip(clip, meta)
        cfg = TrainConfig(**meta["config"])
        model = AAPE(int(meta["dim"]), cfg)
        weights = {k: v for k, v in tensors.items() if k != BANK_MEANS_KEY}
        try:
            missing = model.load_state_dict(weights, strict=False).missing_keys
        except RuntimeError as exc:  # shapes that are not those of d and the switches
            raise UserError(
                f"--artifact: {folder} holds weights that do not fit its config.json "
                f"(dim {meta['dim']}); export it again with `aape export`"
            ) from exc
        if missing:
            raise UserError(f"--artifact: {folder} lacks weights {', '.join(missing[:3])}")
        means = tensors.get(BANK_MEANS_KEY)
        names = meta.get("bank_mean_classes", [])
        bank_means = dict(zip(names, means, strict=True)) if means is not None else {}
        dev = torch.device(device or "cpu")
        return cls(model.to(dev), meta, bank_means, clip)

    @property
    def clip(self) -> LoadedCLIP:
        if self._clip is None:
            self._clip = artifact_clip(self.meta)
        return self._clip

    def _bank_mean(self, names: list[str]) -> torch.Tensor:
        found, missing = [], []
        for n in names:
            key = n if n in self.bank_means else self._canonical.get(canonical_class_name(n))
            if key is None:
                missing.append(n)
            else:
                found.append(self.bank_means[key])
        if missing:
            raise UserError(
                f"classes: no mean bank embedding in the artifact for {', '.join(missing)} "
                f"(class_embed={self.config.class_embed}); generate their banks and re-export, "
                "or use an artifact trained with class_embed=template"
            )
        return torch.stack(found).float()

    def _templates(self, names: list[str]) -> torch.Tensor:
        from prompt_banks.embed import encode_texts, template_text

        emb = encode_texts(self.clip, [template_text(n) for n in names]).embeddings
        return F.normalize(torch.as_tensor(emb, dtype=torch.float32), dim=-1)

    def class_embeddings(self, class_names: list[str]) -> torch.Tensor:
        """w_c for each name under the artifact's `class_embed` switch, [C, d]."""
        if not class_names:
            raise UserError("classes: give at least one class name")
        _check_distinct(class_names)
        kind = self.config.class_embed
        if kind == "bank_mean":
            return F.normalize(self._bank_mean(class_names), dim=-1)
        if needs_bank_means(kind):  # both
            means = self._bank_mean(class_names)
            return F.normalize(self._templates(class_names) + means, dim=-1)
        return self._templates(class_names)

    @torch.no_grad()
    def logits_features(self, x: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        """Logits [N, C] for CLIP image embeddings `x` [N, d]."""
        if x.ndim != 2 or x.shape[1] != self.model.dim:
            raise UserError(
                f"features: expected shape [N, {self.model.dim}], got {list(x.shape)}; "
                "embed the images with the artifact's CLIP"
            )
        head = self._prepared_head(class_names)
        return self.model.logits(x.float().to(self._params[0].device), head).cpu()

    def _prepared_head(self, class_names: list[str]) -> HeadCache:
        """The head prepared for a class list, kept for the last CLASS_LISTS_KEPT lists: a
        serving loop pays the text tower and the head's precomputation (~6 ms at C = 1000) once
        per list, not per call. A cache holds operands derived from the weights, so it is
        prepared again when a parameter has changed in place since (optimiser steps,
        load_state_dict and no_grad updates count; assignments to `.data` do not)."""
        key = tuple(class_names)
        versions = tuple(p._version for p in self._params)
        kept = self._class_lists.pop(key, None)
        if kept is None:
            w = self.class_embeddings(class_names).to(self._params[0].device)
            kept = _ClassList(w, self.model.g.prepare(w), versions)
        elif kept.versions != versions:
            kept = _ClassList(kept.w, self.model.g.prepare(kept.w), versions)
        self._class_lists[key] = kept  # most recently used last
        if len(self._class_lists) > CLASS_LISTS_KEPT:
            self._class_lists.popitem(last=False)
        return kept.head

    def predict_features(
        self, x: torch.Tensor, class_names: list[str], top_k: int = 5
    ) -> list[Prediction]:
        probs = self.logits_features(x, class_names).softmax(-1)
        k = min(top_k, len(class_names))
        val, idx = probs.topk(k, dim=-1)
        out = []
        for v, i in zip(val.tolist(), idx.tolist(), strict=True):
            ranked = [(class_names[j], float(p)) for j, p in zip(i, v, strict=True)]
            out.append(Prediction(ranked[0][0], ranked[0][1], ranked))
        return out

    def predict(
        self,
        images: list[Image.Image | str | Path],
        class_names: list[str],
        top_k: int = 5,
        batch_size: int = 32,
    ) -> list[Prediction]:
        """Top-k classes of each image (PIL images or paths)."""
        from aape.features import encode_images

        pil = [open_image(im) for im in images]
        x = encode_images(self.clip, pil, batch_size=batch_size)
        return self.predict_features(x, class_names, top_k=top_k)


def _check_distinct(class_names: list[str]) -> None:
    """Names the bank spells alike ("red apple", "Red Apple") are one class to it, so they are
    one class here too: a list that gives one class twice is refused, naming both spellings."""
    seen: dict[str, str] = {}
    for name in class_names:
        key = canonical_class_name(name)
        if key in seen:
            first = seen[key]
            same = "is repeated" if first == name else f"and '{first}' are one class to the bank"
            raise UserError(f"classes: '{name}' {same}; give each class once")
        seen[key] = name


def open_image(image: Image.Image | str | Path) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise UserError(f"image {image}: cannot be read ({exc}); pass a PNG/JPEG file") from exc


def artifact_clip(meta: dict[str, Any]) -> LoadedCLIP:
    """The CLIP an artifact's config.json names (checked against its model id and d)."""
    ref = meta.get("clip")
    if not ref:
        raise UserError(
            "artifact: it does not say how to load its CLIP "
            f"({meta['clip_model_id']}); pass clip=load_clip(...)"
        )
    clip = load_clip(CLIPRef(ref["model"], ref.get("pretrained")))
    check_clip(clip, meta)
    return clip


def check_clip(clip: LoadedCLIP, meta: dict[str, Any]) -> None:
    if not is_model_id_of(clip.ref, meta["clip_model_id"]):
        raise UserError(
            f"clip model: the artifact was trained with {meta['clip_model_id']}, not "
            f"{clip.model_id}; load that CLIP (features from another CLIP are meaningless to it)"
        )
    if clip.dim != int(meta["dim"]):
        raise UserError(f"clip model: dimension {clip.dim} != the artifact's d={meta['dim']}")
