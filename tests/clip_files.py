"""CLIP weights as users hold them, built from tiny random models for tests.

- `write_openai_torchscript`: a TorchScript archive in the shape of OpenAI's `ViT-B-16.pt`:
  a scripted CLIP (QuickGELU) with OpenAI's key names, weights partly in fp16 as OpenAI's
  `convert_weights` leaves them, plus the `input_resolution`, `context_length` and
  `vocab_size` entries of its state dict (and no `attn_mask`, which OpenAI keeps as a plain
  attribute).
- `write_hf_cache`: a Hugging Face hub repo in the cache as `huggingface_hub` writes it:
  `models--org--name/{blobs/<etag>, refs/main, snapshots/<commit>/<file> -> ../../blobs/<etag>}`,
  with the etag of a weights (LFS) file its sha256 and of a small file its git blob sha1.
- `hub_config`: `open_clip_config.json` as open_clip hub repos ship it, written by open_clip's
  `push_to_hf_hub.save_config_for_hf` (`model_cfg`; `preprocess_cfg` with mean, std,
  interpolation and resize_mode).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import open_clip
import torch

from prompt_banks.clip import register_project_models

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def tiny_model(seed: int, *, quick_gelu: bool = False, name: str = "aape-tiny"):
    register_project_models()
    torch.manual_seed(seed)
    model = open_clip.create_model(name, force_quick_gelu=quick_gelu).eval()
    return model.requires_grad_(False)  # as load_clip freezes: the same attention kernels run


def write_openai_torchscript(model: torch.nn.Module, path: Path, image_size: int) -> None:
    """Script `model` (converted in place to OpenAI's fp16 mix) and save it as OpenAI ships."""
    open_clip.model.convert_weights_to_lp(model)
    mask = model._buffers.pop("attn_mask")
    model.attn_mask = mask
    for key, value in (
        ("input_resolution", image_size),
        ("context_length", 77),
        ("vocab_size", 49408),
    ):
        if hasattr(model, key):
            delattr(model, key)
        model.register_buffer(key, torch.tensor(value))
    torch.jit.script(model).save(str(path))


def hub_config(arch: str, **model_overrides) -> dict:
    """`open_clip_config.json` of a model, written by open_clip's own hub writer."""
    from open_clip.push_to_hf_hub import save_config_for_hf

    register_project_models()
    cfg = open_clip.get_model_config(arch)
    cfg.update(model_overrides)
    model = open_clip.create_model(arch, force_quick_gelu=bool(cfg.get("quick_gelu")))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "open_clip_config.json"
        save_config_for_hf(model, path, model_config=cfg)
        return json.loads(path.read_text())


def _etag(name: str, data: bytes) -> str:
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_hf_cache(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """Lay `files` out as the hub client caches repo `org/name` at one commit; returns the
    snapshot folder."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repr(sorted(files)).encode() + os.urandom(8)).hexdigest()
    snapshot = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)  # no newline, as huggingface_hub writes it
    for name, data in files.items():
        etag = _etag(name, data)
        (folder / "blobs" / etag).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", etag))
    return snapshot


def json_bytes(value: object) -> bytes:
    return json.dumps(value, indent=2).encode()
