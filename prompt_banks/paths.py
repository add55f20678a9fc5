"""Where everything the tool writes rests: one root, `AAPE_HOME`, with a fixed layout below it."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = "./aape-data"


def aape_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The root of every store, cache and run: `explicit`, else `$AAPE_HOME`, else ./aape-data."""
    return Path(explicit or os.environ.get("AAPE_HOME") or DEFAULT_HOME)


def banks_dir(home: str | os.PathLike[str] | None = None) -> Path:
    return aape_home(home) / "banks"


def features_dir(home: str | os.PathLike[str] | None = None) -> Path:
    return aape_home(home) / "features"


def runs_dir(home: str | os.PathLike[str] | None = None) -> Path:
    return aape_home(home) / "runs"


def artifacts_dir(home: str | os.PathLike[str] | None = None) -> Path:
    return aape_home(home) / "artifacts"
