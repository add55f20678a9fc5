"""Where everything the tool writes rests: one root, `AAPE_HOME`, with a fixed layout below it.

The root is a local folder or an fsspec URL (`s3://bucket/aape`, `gs://...`, `memory://...`).
A local root comes back as a `Path`; a URL root as a URL string joined with "/" (a `Path` would
mangle `s3://x` into `s3:/x`). Only the two stores live on a URL root: the prompt-bank store
(`banks_dir`) and the image-feature cache (`features_dir`). Runs, artifacts and few-shot
manifests are local files (checkpoints, resumable runs): `runs_dir`, `artifacts_dir` and
`local_home` refuse a URL root with a UserError; pass a local --home (or an explicit --out).
"""

from __future__ import annotations

import os
from pathlib import Path

from prompt_banks.errors import UserError

DEFAULT_HOME = "./aape-data"


def is_url(root: str | os.PathLike[str]) -> bool:
    """True for an fsspec URL other than `file://` (which is a local folder)."""
    return "://" in str(root) and not str(root).startswith("file://")


def join(root: Path | str, *parts: str) -> Path | str:
    """`root / parts...`: a Path for a local root, a "/"-joined URL for a URL root."""
    if is_url(root):
        return "/".join([str(root).rstrip("/"), *parts])
    return Path(root, *parts)


def aape_home(explicit: str | os.PathLike[str] | None = None) -> Path | str:
    """The root of every store, cache and run: `explicit`, else `$AAPE_HOME`, else ./aape-data
    (a Path, or the URL string for an fsspec URL)."""
    raw = str(explicit or os.environ.get("AAPE_HOME") or DEFAULT_HOME)
    return raw.rstrip("/") if is_url(raw) else Path(raw.removeprefix("file://"))


def local_home(home: str | os.PathLike[str] | None, what: str) -> Path:
    """The home as a local folder; a URL home is refused, since `what` is only written locally."""
    root = aape_home(home)
    if isinstance(root, str):
        raise UserError(
            f"home: {what} are written to a local folder, not to {root}; "
            "pass a local --home, or an explicit --out (--runs for aape report)"
        )
    return root


def banks_dir(home: str | os.PathLike[str] | None = None) -> Path | str:
    return join(aape_home(home), "banks")


def features_dir(home: str | os.PathLike[str] | None = None) -> Path | str:
    return join(aape_home(home), "features")


def runs_dir(home: str | os.PathLike[str] | None = None) -> Path:
    return local_home(home, "runs") / "runs"


def artifacts_dir(home: str | os.PathLike[str] | None = None) -> Path:
    return local_home(home, "artifacts") / "artifacts"
