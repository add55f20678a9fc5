"""Where a CLIP's architecture and weights come from, and the model id that names them.

A `--clip-model`/`--pretrained` pair resolves to a `CLIPSource`: the name open_clip builds
(`ViT-B-16`, `local-dir:/path`, `hf-hub:org/name`), the open_clip tag or the local weights file
(a file of the user's, the folder's, or the Hugging Face cache's blob), and the architecture.

Model ids (the key of every store and cache):
- `ARCH/TAG` for open_clip's named weights (`ViT-B-16/openai`), `ARCH/random-seed0` for the
  seeded random initialisation;
- `ARCH/w-DIGEST` for weights from a file: DIGEST is the tensor digest (`clip_weights`), ARCH the
  open_clip architecture whose config (defaults filled in, preprocessing included) equals the one
  used, else `cfg-HASH`. So one set of weights has one id whether it comes as `.pt`,
  `.safetensors`, a `local-dir:` folder or an `hf-hub:` repo in the cache, and weights under
  another architecture (e.g. QuickGELU vs GELU) have another.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from copy import deepcopy
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from prompt_banks.clip_weights import is_torchscript
from prompt_banks.errors import UserError

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
HF_CONFIG_NAME = "open_clip_config.json"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
# Config keys that only seed initialisation or ask for other downloads: not part of identity.
INIT_ONLY_KEYS = (
    "init_logit_scale",
    "init_logit_bias",
    "timm_model_pretrained",
    "hf_model_pretrained",
)
DIGEST_CHARS = 16


@dataclass(frozen=True)
class CLIPSource:
    create_name: str  # what open_clip.create_model builds
    tag: str | None  # an open_clip pretrained tag, downloaded by open_clip
    weights: Path | None  # a local weights file to load into the architecture
    torchscript: bool  # an OpenAI TorchScript checkpoint: QuickGELU, as OpenAI trained it
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]

    @property
    def label(self) -> str:
        return architecture_label(self.model_cfg, self.preprocess_cfg, self.torchscript)


def _hub_file(repo: str, filename: str | None) -> Path:
    from huggingface_hub import constants
    from open_clip.pretrained import download_pretrained_from_hf

    try:
        return Path(download_pretrained_from_hf(repo, filename=filename))
    except (OSError, RuntimeError, ValueError) as exc:
        what = filename or "open_clip_model.safetensors / open_clip_pytorch_model.bin"
        where = "could not be downloaded"
        if constants.HF_HUB_OFFLINE:
            where = "is not in the Hugging Face cache (HF_HUB_OFFLINE=1)"
        raise UserError(
            f"clip model: {what} of {HF_HUB}{repo} {where}; fetch it once with "
            f"`hf download {repo}` on a connected machine (same HF_HOME), or pass "
            f"{LOCAL_DIR}FOLDER"
        ) from exc


def _read_config(path: Path, where: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"clip model: {path.parent} has no {path.name}; {where}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"clip model: {path} is not valid JSON ({exc}); {where}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise UserError(f"clip model: {path} has no 'model_cfg'; {where}")
    return config


def _folder_weights(folder: Path) -> Path:
    from open_clip.factory import _find_checkpoint_in_dir  # open_clip's own choice of file

    found = _find_checkpoint_in_dir(folder)
    if found is None:
        raise UserError(
            f"clip model: {LOCAL_DIR}{folder} has no weights file; put open_clip_model.safetensors "
            "(or open_clip_pytorch_model.bin) beside its open_clip_config.json"
        )
    return Path(found)


def resolve_source(model: str, pretrained: str | None) -> CLIPSource:
    """Validate a `--clip-model`/`--pretrained` pair; a one-line UserError names what is wrong."""
    import open_clip

    from prompt_banks.clip import PROJECT_MODELS, register_project_models

    register_project_models()
    if model.startswith((LOCAL_DIR, HF_HUB)) and pretrained is not None:
        raise UserError(
            f"clip pretrained: {model} brings its own weights; drop --pretrained {pretrained}"
        )
    if model.startswith(LOCAL_DIR):
        folder = Path(model.removeprefix(LOCAL_DIR))
        if not folder.is_dir():
            raise UserError(
                f"clip model: local-dir folder {folder} does not exist; pass an existing folder"
            )
        fix = f"an open_clip folder holds {HF_CONFIG_NAME} with model_cfg and its weights"
        config = _read_config(folder / HF_CONFIG_NAME, fix)
        weights = _folder_weights(folder)
        return _file_source(model, weights, config["model_cfg"], config.get("preprocess_cfg"))
    if model.startswith(HF_HUB):
        repo = model.removeprefix(HF_HUB)
        config = _read_config(_hub_file(repo, HF_CONFIG_NAME), f"{repo} is not an open_clip repo")
        weights = _hub_file(repo, None)
        return _file_source(model, weights, config["model_cfg"], config.get("preprocess_cfg"))
    if model not in open_clip.list_models():
        raise UserError(
            f"clip model: '{model}' is not an open_clip architecture; use one of "
            f"open_clip.list_models() (e.g. ViT-B-16), aape-tiny, {LOCAL_DIR}FOLDER or "
            f"{HF_HUB}ORG/NAME"
        )
    cfg = open_clip.get_model_config(model)
    if pretrained is None:
        if model not in PROJECT_MODELS:
            raise UserError(
                f"clip pretrained: '{model}' needs weights; pass --pretrained TAG (e.g. openai) "
                f"or a local weights file"
            )
        return CLIPSource(model, None, None, False, cfg, {})
    if Path(pretrained).is_file():
        return _file_source(model, Path(pretrained), cfg, None)
    if pretrained in open_clip.list_pretrained_tags_by_model(model):
        return CLIPSource(model, pretrained, None, False, cfg, {})
    if os.sep in pretrained or pretrained.endswith(WEIGHT_SUFFIXES):
        raise UserError(f"clip pretrained: weights file {pretrained} does not exist")
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
    raise UserError(
        f"clip pretrained: '{pretrained}' is not a tag of {model} (known: {tags}); "
        f"or pass a local weights file"
    )


def _file_source(
    name: str, weights: Path, model_cfg: dict[str, Any], preprocess: dict[str, Any] | None
) -> CLIPSource:
    return CLIPSource(name, None, weights, is_torchscript(weights), model_cfg, preprocess or {})


def architecture(
    model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any], quick_gelu: bool = False
) -> dict[str, Any]:
    """The config that determines what a model computes, with open_clip's defaults filled in,
    so that equal architectures written differently compare equal."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = deepcopy(model_cfg)
    for key, kind in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg)):
        with contextlib.suppress(TypeError):  # keys of another open_clip version: as written
            cfg[key] = asdict(kind(**cfg.get(key, {})))
        for k in INIT_ONLY_KEYS:
            cfg.get(key, {}).pop(k, None)
    for k in INIT_ONLY_KEYS:
        cfg.pop(k, None)
    cfg["quick_gelu"] = bool(cfg.get("quick_gelu", False) or quick_gelu)
    cfg["custom_text"] = bool(cfg.get("custom_text", False))
    pre = merge_preprocess_dict(PreprocessCfg(), preprocess_cfg)
    size = cfg.get("vision_cfg", {}).get("image_size", pre["size"])
    pre["size"] = list(size) if isinstance(size, list | tuple) else [size, size]
    return json.loads(json.dumps({"model": cfg, "preprocess": pre}, sort_keys=True))


def _fingerprint(arch: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()


@cache
def _named_architectures() -> dict[str, str]:
    """fingerprint -> the first (sorted) open_clip name with that architecture."""
    import open_clip

    names: dict[str, str] = {}
    for name in sorted(open_clip.list_models()):
        cfg = open_clip.get_model_config(name)
        if cfg and "vision_cfg" in cfg and "text_cfg" in cfg:
            names.setdefault(_fingerprint(architecture(cfg, {})), name)
    return names


def architecture_label(
    model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any], quick_gelu: bool = False
) -> str:
    """The open_clip name of this architecture, or `cfg-HASH` for one open_clip does not name."""
    fp = _fingerprint(architecture(model_cfg, preprocess_cfg, quick_gelu))
    return _named_architectures().get(fp) or f"cfg-{fp[:10]}"


def weights_model_id(label: str, digest: str) -> str:
    return f"{label}/w-{digest[:DIGEST_CHARS]}"
