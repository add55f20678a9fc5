"""Reading the torch files runs write (checkpoints, trained prefixes): a damaged or cut-short file
is one line naming it and the fix, never torch's traceback."""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch

from prompt_banks.errors import UserError

# What torch.load raises on a truncated, overwritten or foreign file.
LOAD_ERRORS = (OSError, EOFError, RuntimeError, pickle.UnpicklingError, ValueError)


def load_torch_file(
    path: str | os.PathLike[str], *, field: str, fix: str, map_location: Any = "cpu"
) -> Any:
    """`torch.load(path, weights_only=True)`, or a UserError "<field>: <path>: not a readable
    checkpoint, damaged or cut short (<torch's first sentence>); <fix>"."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except LOAD_ERRORS as exc:
        reason = str(exc).split(". ")[0].split("\n")[0].strip()
        said = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        raise UserError(
            f"{field}: {path}: not a readable checkpoint, damaged or cut short ({said}); {fix}"
        ) from exc


def checkpoint_dict(
    path: str | os.PathLike[str], keys: tuple[str, ...], *, field: str, fix: str,
    map_location: Any = "cpu",
) -> dict[str, Any]:  # fmt: skip
    """A checkpoint that must be a dict holding `keys`, or the one-line UserError of
    `load_torch_file` (or "... is not a checkpoint of this kind (no k1, k2); <fix>")."""
    saved = load_torch_file(path, field=field, fix=fix, map_location=map_location)
    missing = [k for k in keys if k not in saved] if isinstance(saved, dict) else list(keys)
    if missing:
        raise UserError(
            f"{field}: {path}: not a checkpoint of this kind (no {', '.join(missing)}); {fix}"
        )
    return saved
