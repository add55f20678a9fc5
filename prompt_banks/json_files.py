"""Reading a JSON file the tool wrote (a run record, an artifact's config or manifest): a JSON
object, or a one-line UserError naming the file and its fix, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prompt_banks.errors import UserError


def read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    """The JSON object in `path`; `what` names the option or store it came from."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise UserError(f"{what}: {path} is not valid JSON ({reason}); {fix}") from exc
    if not isinstance(value, dict):
        raise UserError(f"{what}: {path} holds a JSON {type(value).__name__}, not an object; {fix}")
    return value
