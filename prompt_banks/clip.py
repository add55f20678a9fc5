"""Loading a frozen open_clip model: by name + pretrained tag, from a local weights file, from a
`local-dir:` folder, or the project's tiny random architecture for tests and offline runs.

Every loaded model carries a `model_id` that names exactly which weights produced an embedding;
stores key embeddings by it, so two different weight files never share rows.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from prompt_banks.errors import UserError

log = logging.getLogger(__name__)

# Architectures this project ships as open_clip configs (JSON data in prompt_banks/model_configs).
PROJECT_MODELS = {"aape-tiny"}
# Random initialisation is seeded so that every process builds identical "random" weights:
# features and text embeddings computed in different runs must live in the same space.
RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class CLIPRef:
    """Which CLIP to load: an open_clip architecture and where its weights come from.

    `pretrained` is an open_clip tag (`openai`, `laion2b_s34b_b88k`), a path to a local weights
    file, or None for random weights (only sensible for `aape-tiny`). `model` may also be
    `local-dir:/path` (a folder with `open_clip_config.json` and weights), as in open_clip.
    """

    model: str
    pretrained: str | None = None

    @property
    def is_local_file(self) -> bool:
        return self.pretrained is not None and Path(self.pretrained).is_file()

    @property
    def model_id(self) -> str:
        """A stable name for these exact weights, used as a key in every store."""
        if self.model.startswith("local-dir:"):
            folder = Path(self.model.removeprefix("local-dir:"))
            return f"local-dir/{_digest_folder(folder)}"
        if self.pretrained is None:
            return f"{self.model}/random-seed{RANDOM_INIT_SEED}"
        if self.is_local_file:
            return f"{self.model}/file-{_digest_file(Path(self.pretrained))}"
        return f"{self.model}/{self.pretrained}"


@dataclass
class LoadedCLIP:
    ref: CLIPRef
    model: Any  # open_clip.CLIP or CustomTextCLIP, frozen and in eval mode
    tokenizer: Any
    preprocess_train: Any
    preprocess_val: Any
    dim: int
    context_length: int
    untrained: bool
    device: torch.device

    @property
    def model_id(self) -> str:
        return self.ref.model_id


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def _digest_folder(folder: Path) -> str:
    if not folder.is_dir():
        raise UserError(
            f"clip model: local-dir folder {folder} does not exist; pass an existing folder"
        )
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file():
            h.update(p.name.encode())
            h.update(_digest_file(p).encode())
    return h.hexdigest()[:12]


@cache
def register_project_models() -> None:
    """Make the project's own architectures (model_configs/*.json) known to open_clip."""
    import open_clip

    configs = resources.files("prompt_banks") / "model_configs"
    with resources.as_file(configs) as folder:
        open_clip.add_model_config(folder)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` or "auto" picks CUDA when present, else CPU; never hard-coded."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_clip(ref: CLIPRef, device: str | torch.device | None = None) -> LoadedCLIP:
    """Load a frozen CLIP, or raise a one-line UserError saying which field is wrong."""
    import open_clip

    register_project_models()
    dev = resolve_device(device)
    is_local_dir = ref.model.startswith("local-dir:")
    if not is_local_dir and ref.model not in open_clip.list_models():
        raise UserError(
            f"clip model: '{ref.model}' is not an open_clip architecture; use one of "
            f"open_clip.list_models() (e.g. ViT-B-16) or aape-tiny"
        )
    if ref.pretrained is None and ref.model not in PROJECT_MODELS and not is_local_dir:
        raise UserError(
            f"clip pretrained: '{ref.model}' needs weights; pass --pretrained TAG (e.g. openai) "
            f"or a local weights file"
        )
    if (
        ref.pretrained is not None
        and not ref.is_local_file
        and not is_local_dir
        and ref.pretrained not in open_clip.list_pretrained_tags_by_model(ref.model)
    ):
        if os.sep in ref.pretrained or ref.pretrained.endswith((".pt", ".bin", ".safetensors")):
            raise UserError(f"clip pretrained: weights file {ref.pretrained} does not exist")
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(ref.model)) or "none"
        raise UserError(
            f"clip pretrained: '{ref.pretrained}' is not a tag of {ref.model} (known: {tags}); "
            f"or pass a local weights file"
        )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
                ref.model, pretrained=ref.pretrained, device=dev
            )
    except (OSError, RuntimeError, ValueError) as exc:  # network, missing or mismatched weights
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"clip pretrained: could not load '{ref.pretrained}' for {ref.model} ({first}); "
            f"on an offline machine pass a local weights file"
        ) from exc
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(ref.model)
    untrained = ref.pretrained is None and not is_local_dir
    if untrained:
        log.warning(
            "CLIP %s has RANDOM, UNTRAINED weights: embeddings carry no meaning; use it only for "
            "tests and offline smoke runs, never to judge accuracy",
            ref.model,
        )
    dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else None
    if dim is None:
        with torch.inference_mode():
            dim = int(model.encode_text(tokenizer(["x"]).to(dev)).shape[-1])
    return LoadedCLIP(
        ref=ref,
        model=model,
        tokenizer=tokenizer,
        preprocess_train=preprocess_train,
        preprocess_val=preprocess_val,
        dim=dim,
        context_length=int(getattr(model, "context_length", 77)),
        untrained=untrained,
        device=dev,
    )
