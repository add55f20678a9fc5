"""Rank texts for images (and images for texts) with CLIP and a retrieval artifact alone.

The artifact is h's weights and config.json (format `aape-retrieval-artifact/1`): no
aggregator, no captions, no LLM. A few tens of KB at d = 512.

    ranker = Retriever.load("runs/coco/artifact")
    ranker.rank(["a.jpg"], ["a dog on a beach", "a red car"])  # -> [[(text, score), ...]]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from aape.artifact import base_meta, cpu_tensors, read_artifact, write_artifact_dir
from aape.inference import artifact_clip, check_clip, open_image
from aape.vl.config import RetrievalConfig
from aape.vl.model import RetrievalAAPE
from aape.vl.train import RetrievalResult
from prompt_banks.clip import CLIPRef, LoadedCLIP
from prompt_banks.errors import UserError

FORMAT = "aape-retrieval-artifact/1"
HOW = "make one with `aape vl train`"
# `aape vl train` writes the artifact of a finished run again from its checkpoint.
REMAKE = "write it again with `aape vl train` (same --dataset, --set and --out)"


def export_retrieval_artifact(
    result: RetrievalResult,
    out_dir: str | Path,
    *,
    clip_ref: CLIPRef | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write the artifact of a trained retrieval AAPE to `out_dir` (replaced atomically)."""
    if result.model is None:
        raise UserError("aape vl train: method zeroshot has no AAPE weights to export")
    meta = base_meta(FORMAT, result.model_id, clip_ref, result.dim, result.config.model_dump())
    meta.update(train_dataset=result.dataset, health=result.health, metrics=metrics or {})
    tensors = cpu_tensors(result.model.inference_state())
    return write_artifact_dir(out_dir, tensors, meta)


def load_retrieval_artifact(
    folder: str | Path, device: str | None = "cpu"
) -> tuple[RetrievalResult, dict[str, Any]]:
    """The artifact as a `RetrievalResult` (model = h only) and its config.json."""
    meta, tensors = read_artifact(folder, FORMAT, HOW, RetrievalConfig, REMAKE)
    cfg = RetrievalConfig(**meta["config"])
    model = RetrievalAAPE(int(meta["dim"]), cfg)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise UserError(
            f"--artifact: {folder} holds weights that do not fit h ({exc})".split("\n")[0]
        ) from exc
    result = RetrievalResult(
        cfg,
        model.to(torch.device(device or "cpu")).eval(),
        model_id=meta["clip_model_id"],
        dim=int(meta["dim"]),
        dataset=meta.get("train_dataset", ""),
        health=meta.get("health", {}),
    )
    return result, meta


class Retriever:
    """CLIP + a retrieval artifact: scores between images and texts."""

    def __init__(
        self, result: RetrievalResult, meta: dict[str, Any], clip: LoadedCLIP | None = None
    ) -> None:
        self.result, self.meta = result, meta
        self._clip = clip

    @classmethod
    def load(
        cls, folder: str | Path, clip: LoadedCLIP | None = None, device: str | None = "cpu"
    ) -> Retriever:
        """Load an artifact; `clip` (else loaded from the artifact's CLIP reference on first
        use) must be the CLIP it was trained with."""
        result, meta = load_retrieval_artifact(folder, device)
        if clip is not None:
            check_clip(clip, meta)
        return cls(result, meta, clip)

    @property
    def clip(self) -> LoadedCLIP:
        if self._clip is None:
            self._clip = artifact_clip(self.meta)
        return self._clip

    def image_queries(self, images: list[Image.Image | str | Path]) -> torch.Tensor:
        """The retrieval queries of images (PIL or paths), [N, d] unit vectors."""
        from aape.features import encode_images

        if not images:
            raise UserError("images: give at least one image")
        return self.result.queries(encode_images(self.clip, [open_image(i) for i in images]))

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        from prompt_banks.embed import encode_texts

        if not texts:
            raise UserError("--texts: the file holds no text; one text per line")
        return F.normalize(encode_texts(self.clip, list(texts)).embeddings, dim=-1)

    def scores(self, images: list[Image.Image | str | Path], texts: list[str]) -> torch.Tensor:
        """cos(query(image), text) for every pair, [N_images, N_texts]."""
        return self.image_queries(images) @ self.text_embeddings(texts).T

    def rank(
        self, images: list[Image.Image | str | Path], texts: list[str], top_k: int = 5
    ) -> list[list[tuple[str, float]]]:
        """For each image its `top_k` texts, best first, with their cosine scores."""
        s = self.scores(images, texts)
        val, idx = s.topk(min(top_k, len(texts)), dim=1)
        return [
            [(texts[j], float(v)) for j, v in zip(i, vs, strict=True)]
            for i, vs in zip(idx.tolist(), val.tolist(), strict=True)
        ]
