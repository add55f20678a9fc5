"""Loading a frozen open_clip model: by name + pretrained tag, from a local weights file (also
OpenAI's TorchScript `.pt`), from a `local-dir:` folder or an `hf-hub:` repo in the Hugging Face
cache, or the project's tiny random architecture for tests and offline runs.

Every loaded model carries a `model_id` that names exactly which weights produced an embedding;
stores key embeddings by it. It comes from the weights' content (`prompt_banks.clip_source`), so
two different weight files never share rows and the same weights in two formats always do.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from prompt_banks.clip_source import HF_HUB, LOCAL_DIR, CLIPSource, resolve_source, weights_model_id
from prompt_banks.clip_weights import (
    cached_digest,
    read_state_dict,
    remember_digest,
    tensor_digest,
    weights_digest,
)
from prompt_banks.errors import UserError
from prompt_banks.schema import file_sha256

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
    file (`.safetensors`, a state dict `.pt`/`.bin`, or OpenAI's TorchScript `.pt`), or None for
    random weights (only sensible for `aape-tiny`). `model` may also be `local-dir:/path` (a
    folder with `open_clip_config.json` and weights) or `hf-hub:org/name` (read from the Hugging
    Face cache when `HF_HUB_OFFLINE=1`), as in open_clip; these bring their own weights, so
    `pretrained` must then be None.
    """

    model: str
    pretrained: str | None = None

    def source(self) -> CLIPSource:
        return resolve_source(self.model, self.pretrained)

    @cached_property
    def model_id(self) -> str:
        """A stable name for these exact weights, used as a key in every store (see
        `prompt_banks.clip_source`): by tag, or by the digest of the tensors, never file bytes."""
        schema = self.model.startswith((LOCAL_DIR, HF_HUB))
        if not schema and (self.pretrained is None or not Path(self.pretrained).is_file()):
            return f"{self.model}/{self.pretrained or f'random-seed{RANDOM_INIT_SEED}'}"
        src = self.source()
        assert src.weights is not None  # a file, a local-dir's or an hf-hub repo's
        return weights_model_id(src.label, weights_digest(src.weights))


def legacy_model_id(ref: CLIPRef) -> str | None:
    """The id the project gave file weights before ids came from tensor content (a sha256 of
    the file's bytes, or of a `local-dir:` folder's files), so artifacts exported then still
    accept the same CLIP; None where the id did not change (tags, random weights, hf-hub)."""
    if ref.model.startswith(LOCAL_DIR):
        h = hashlib.sha256()
        for p in sorted(Path(ref.model.removeprefix(LOCAL_DIR)).iterdir()):
            if p.is_file():
                h.update(p.name.encode())
                h.update(file_sha256(p)[:12].encode())
        return f"local-dir/{h.hexdigest()[:12]}"
    if ref.pretrained is not None and Path(ref.pretrained).is_file():
        return f"{ref.model}/file-{file_sha256(Path(ref.pretrained))[:12]}"
    return None


def is_model_id_of(ref: CLIPRef, model_id: str) -> bool:
    """True if `model_id` (e.g. an artifact's) names the weights of `ref`, by today's id or by
    the old file-bytes one."""
    return model_id == ref.model_id or model_id == legacy_model_id(ref)


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
    """Load a frozen CLIP, or raise a one-line UserError saying which field or file is wrong."""
    import open_clip

    src = ref.source()
    dev = resolve_device(device)
    state = None
    if src.weights is not None and cached_digest(src.weights) is None:
        # a file not seen before (or changed): read and validate it, its digest is the id
        state = read_state_dict(src.weights)
        remember_digest(src.weights, tensor_digest(state))
    try:
        quiet = _quiet_random_init_warning(src.weights is not None)
        with torch.random.fork_rng(devices=[]), quiet:
            torch.manual_seed(RANDOM_INIT_SEED)
            model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
                src.create_name,
                pretrained=src.tag,
                load_weights=src.tag is not None,
                force_quick_gelu=src.torchscript,
                device=dev,
            )
    except (OSError, RuntimeError, ValueError) as exc:  # network, missing or mismatched weights
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"clip pretrained: could not load '{ref.pretrained}' for {ref.model} ({first}); "
            f"on an offline machine pass a local weights file"
        ) from exc
    except (KeyError, TypeError) as exc:  # a folder's or repo's model_cfg open_clip cannot build
        raise UserError(
            f"clip model: open_clip cannot build the model_cfg of {ref.model} ({type(exc).__name__}"
            f": {exc}); fix its open_clip_config.json"
        ) from exc
    if src.weights is not None:
        load_weights(
            model, src.weights, arch=src.create_name, torchscript=src.torchscript, state=state
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(src.create_name)
    untrained = src.tag is None and src.weights is None
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


class _RandomInitFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()


@contextmanager
def _quiet_random_init_warning(weights_follow: bool) -> Iterator[None]:
    """Hide open_clip's "initialized randomly" warning when the weights are loaded right after."""
    root = logging.getLogger()
    flt = _RandomInitFilter()
    if weights_follow:
        root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def load_weights(
    model: Any,
    path: Path,
    *,
    arch: str,
    torchscript: bool,
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Load a weights file into the built architecture: open_clip's own `load_checkpoint` for
    state-dict files (its format conversions included), the extracted state dict for OpenAI's
    TorchScript archives (whose key names are open_clip's). `state` is the file's state dict if
    it was read already. Another architecture's weights give a UserError naming the first key
    that differs."""
    import open_clip

    try:
        if torchscript:
            model.load_state_dict(state or read_state_dict(path), strict=True)
        else:
            open_clip.load_checkpoint(model, str(path), strict=True)
    except (RuntimeError, AssertionError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        found = state or read_state_dict(path)  # a damaged file raises its own error here
        raise UserError(
            f"clip pretrained: {path} holds weights of another architecture than {arch} "
            f"({_first_difference(model.state_dict(), found)}); pass the --clip-model the "
            "weights were trained as"
        ) from exc


def _first_difference(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    for name, t in expected.items():
        if name not in found:
            return f"no {name}"
        if tuple(found[name].shape) != tuple(t.shape):
            shape = "x".join(map(str, found[name].shape))
            return f"{name} is {shape}, expected {'x'.join(map(str, t.shape))}"
    extra = sorted(set(found) - set(expected))
    return f"unexpected {extra[0]}" if extra else "its tensors do not fit"
