"""CLIP weight files as users hold them: read one into a state dict, or fail in one line.

Formats read: `.safetensors`; a PyTorch pickle of a state dict (`.pt`/`.bin`/`.pth`, also an
open_clip training checkpoint `{"state_dict": {"module.…": …}}`), loaded with `weights_only`;
and OpenAI's TorchScript archives (what `pretrained="openai"` downloads, e.g. `ViT-B-16.pt`),
read with `torch.jit.load` (TorchScript, not a Python pickle), whose `input_resolution`,
`context_length` and `vocab_size` entries are metadata, not weights.

Weights are identified by content: `weights_digest` hashes the tensors (sorted names, shapes,
dtypes, values; floating tensors as float32, the precision the model is loaded in), so the same
weights give one digest as `.pt`, `.safetensors`, an open_clip folder or a Hugging Face cache,
and an fp16 file gives the digest of its float32 upcast. The digest of a file is cached by
(real path, size, mtime), so a ViT-B/16 is hashed once, not on every command.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch

from prompt_banks.atomic import atomic_path
from prompt_banks.errors import UserError

# Entries of OpenAI's TorchScript state dicts that describe the model instead of weighting it.
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format (a truncated one loses its directory, not this)
PICKLE_PROTO = b"\x80"  # a pickle (protocol 2+) starts with PROTO; torch's legacy format does
DIGEST_CACHE_NAME = "weight-digests.json"
FIX = (
    "pass a .safetensors, a PyTorch state dict (.pt/.bin) or an OpenAI TorchScript .pt "
    "(download it again if it was cut short)"
)


def is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (a zip with `constants.pkl` and `code/`), as OpenAI ships."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _looks_like_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n < path.stat().st_size


def _bad_file(path: Path, reason: str) -> UserError:
    return UserError(f"clip pretrained: {path} is not a CLIP weights file ({reason}); {FIX}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The weights in `path` as an open_clip state dict (OpenAI metadata dropped), on the CPU."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"clip pretrained: weights file {p} does not exist")
    if p.stat().st_size == 0:
        raise UserError(f"clip pretrained: {p} is empty (0 bytes); download the weights again")
    if p.suffix == ".safetensors":
        raw = _read_safetensors(p)
    elif is_torchscript(p):
        try:
            raw = torch.jit.load(str(p), map_location="cpu").state_dict()
        except (RuntimeError, ValueError, OSError) as exc:
            raise _bad_file(p, f"a damaged TorchScript archive: {_first_line(exc)}") from exc
    else:
        raw = _read_pickle(p)
    return canonical_state_dict(raw, p)


def _read_safetensors(p: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _bad_file(p, f"unreadable safetensors: {_first_line(exc)}") from exc


def _read_pickle(p: Path) -> object:
    with p.open("rb") as f:
        head = f.read(4)
    renamed = f"safetensors under another name; rename it {p.stem}.safetensors"
    if head != ZIP_MAGIC and head[:1] != PICKLE_PROTO:
        if _looks_like_safetensors(p):
            raise _bad_file(p, renamed)
        raise _bad_file(p, "neither a PyTorch zip or pickle nor safetensors")
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise UserError(
                f"clip pretrained: {p} is a pickled Python object, not a state dict; re-save it "
                "with torch.save(model.state_dict(), path) or as .safetensors"
            ) from exc
        raise _bad_file(p, renamed if _looks_like_safetensors(p) else _first_line(exc)) from exc
    except Exception as exc:  # the unpickler fails in many ways on damaged bytes
        raise _bad_file(p, f"truncated or corrupt: {_first_line(exc)}") from exc


def canonical_state_dict(raw: object, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap a training checkpoint, strip DDP's `module.` prefix, drop OpenAI's metadata."""
    sd = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    if not isinstance(sd, dict) or not sd:
        raise _bad_file(path, f"it holds a {type(sd).__name__}, not a state dict of tensors")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise _bad_file(path, "it holds a dict, but not one of tensor names to tensors")
    if all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if k not in OPENAI_METADATA_KEYS}


def tensor_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, values) of every tensor in name order; floating tensors
    are hashed as float32, the precision the model runs in."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu()
        if t.is_floating_point():
            t = t.float()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{tuple(t.shape)}\0".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def digest_cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "aape" / DIGEST_CACHE_NAME


def _cache_key(path: Path) -> str:
    real = path.resolve()
    st = real.stat()
    return f"{real}|{st.st_size}|{st.st_mtime_ns}"


def _read_cache(file: Path) -> dict[str, str]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # absent or damaged: digests are recomputed, nothing is lost
    return data if isinstance(data, dict) else {}


def cached_digest(path: str | os.PathLike[str]) -> str | None:
    """The cached tensor digest of `path` if the file is unchanged since it was hashed."""
    p = Path(path)
    return _read_cache(digest_cache_file()).get(_cache_key(p)) if p.is_file() else None


def remember_digest(path: str | os.PathLike[str], digest: str) -> None:
    """Cache `digest` for `path` as it is now; an unwritable cache is skipped silently (the
    digest is then recomputed next time)."""
    file = digest_cache_file()
    key = _cache_key(Path(path))
    real = key.rsplit("|", 2)[0]
    entries = {k: v for k, v in _read_cache(file).items() if k.rsplit("|", 2)[0] != real}
    entries[key] = digest  # one entry per file: an older size/mtime of it is dropped
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(file) as tmp:
            tmp.write_text(json.dumps(entries, indent=0, sort_keys=True), encoding="utf-8")
    except OSError:
        pass


def weights_digest(path: str | os.PathLike[str]) -> str:
    """The tensor digest of a weights file, from the cache when the file is unchanged."""
    found = cached_digest(path)
    if found is None:
        found = tensor_digest(read_state_dict(path))
        remember_digest(path, found)
    return found
