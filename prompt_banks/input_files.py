"""Input files of the bank commands: JSON read strictly (a repeated key is an error), reference
class lists and rename maps. Every problem is a one-line UserError naming the file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prompt_banks import clip_benchmark_files as cbf
from prompt_banks.errors import UserError
from prompt_banks.text import normalize_whitespace

# The formats `importers.import_file` reads (see `bank_formats`).
FORMATS = (
    "cupl",
    "dclip",
    "clip-benchmark",
    "clip-benchmark-templates",
    "clip-benchmark-classnames",
)


def _imagenet_classes() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


# Class lists a file is compared against when none is given: name -> (size, loader). The size
# lets a file far smaller than the list skip loading it.
KNOWN_CLASS_LISTS: dict[str, tuple[int, Callable[[], list[str]]]] = {
    "imagenet": (1000, _imagenet_classes)
}


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.load keeps the last of two equal keys silently; that is a collision too.
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise _DuplicateKey(k)
        seen[k] = v
    return seen


def load_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file, or a one-line UserError naming the file and what is wrong with it."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file; pass an existing JSON file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read it as UTF-8 text ({exc}); pass a JSON file") from exc
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{p}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); fix the file"
        ) from exc
    except _DuplicateKey as exc:
        raise UserError(f"{p}: key '{exc.args[0]}' appears twice; keep one of them") from exc


def load_class_list(path: str | os.PathLike[str], dataset: str | None = None) -> list[str]:
    """A reference class list: a known name (`imagenet`), a JSON list, CLIP_benchmark's
    `{dataset: [name, ...]}` (the list of `dataset`, or the only one), or one class per line."""
    if str(path) in KNOWN_CLASS_LISTS:
        return KNOWN_CLASS_LISTS[str(path)][1]()
    p = Path(path)
    if p.suffix == ".json":
        data = load_json(p)
        if isinstance(data, dict):
            return cbf.class_names(data, dataset or "", p)
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data) or not data:
            raise UserError(f"{p}: expected a JSON list of class names")
        return data
    if not p.is_file():
        raise UserError(f"{p}: no such file; pass a class list (.json list or one per line)")
    names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise UserError(f"{p}: holds no class names; one class per line")
    return names


def load_rename_map(path: str | os.PathLike[str]) -> dict[str, str]:
    """A rename mapping file: JSON {"old name": "new name"}."""
    data = load_json(path)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and normalize_whitespace(v)
        for k, v in data.items()
    ):
        raise UserError(f'{path}: expected a JSON object {{"old name": "new name"}}')
    return data
