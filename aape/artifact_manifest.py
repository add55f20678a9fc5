"""An artifact's manifest: the sha256 of each of its files, written by `aape export` and checked
before anything in the folder is believed.

An artifact whose `config.json` or weights were edited after export is refused: a changed config
would otherwise silently change predictions. The manifest covers the other files, not itself;
a hand-made manifest that matches hand-edited files is then checked like any config (valid
JSON, a positive integer `dim`, weights of that size).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from prompt_banks.errors import UserError
from prompt_banks.json_files import read_json
from prompt_banks.schema import file_sha256

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "aape-artifact-manifest/1"
REMAKE = "export it again with `aape export`"  # the fix for a classification artifact


def write_manifest(folder: Path, names: Iterable[str]) -> Path:
    """Write `manifest.json` into `folder` for the files `names` (already written there)."""
    files = {name: file_sha256(folder / name) for name in sorted(names)}
    path = folder / MANIFEST_NAME
    path.write_text(
        json.dumps({"format": MANIFEST_FORMAT, "sha256": files}, indent=2) + "\n", encoding="utf-8"
    )
    return path


def verify_manifest(folder: Path, required: Iterable[str], remake: str = REMAKE) -> None:
    """Refuse an artifact whose files are not those the manifest lists, byte for byte; the
    `required` files must be among them. `remake` says how to write the artifact again."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise UserError(
            f"--artifact: {folder} has no {MANIFEST_NAME} (made by an older aape or by hand); "
            f"{remake}"
        )
    redo = f"{remake} instead of editing it"
    manifest = read_json(path, "--artifact", redo)
    files = manifest.get("sha256")
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
        raise UserError(f"--artifact: {path} is not a {MANIFEST_FORMAT} manifest; {redo}")
    unlisted = sorted(set(required) - set(files))
    if unlisted:
        raise UserError(f"--artifact: {path} does not list {', '.join(unlisted)}; {redo}")
    for name, digest in sorted(files.items()):
        target = folder / str(name)
        if not target.is_file():
            raise UserError(f"--artifact: {target} is missing; {redo}")
        if file_sha256(target) != digest:
            raise UserError(
                f"--artifact: {target} was changed after export (its sha256 is not the one in "
                f"{MANIFEST_NAME}); {redo}"
            )
