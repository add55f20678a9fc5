"""Lineage: what a run or an artifact records so "what trained this?" has an answer from it alone.

`lineage(task)` gathers, for a Task built from the stores: the bank snapshot it read (its id,
domain, CLIP model id, the LLM models and parameters that wrote its rows with counts), a
fingerprint of the image features it used (every split's rows: ids, views, labels, vectors)
and of its few-shot manifest, and the version and git commit of the code that ran.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from aape.data import FeatureSet, Task

PACKAGE = "aape"


def features_fingerprint(fs: FeatureSet | None) -> str | None:
    """A digest of a split's rows as training read them: image ids, labels, views and vectors."""
    if fs is None:
        return None
    h = hashlib.sha256()
    h.update("\n".join(fs.image_ids).encode("utf-8"))
    for t in (fs.labels, fs.image_index, fs.view, fs.x):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The installed package version and, when the code runs from a git checkout, its commit
    (with `dirty` when it has uncommitted changes)."""
    try:
        version: str | None = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = None
    here = Path(__file__).resolve().parent
    commit, dirty = None, None
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip() or None  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout  # fmt: skip
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass  # not a checkout (an installed wheel), or no git: the version alone says it
    return {"package": PACKAGE, "version": version, "git_commit": commit, "git_dirty": dirty}


def lineage(task: Task) -> dict[str, Any]:
    """The lineage record of a run on `task` (see the module doc)."""
    splits = {"train": task.train, "val": task.val, "test": task.test}
    return {
        "bank": task.provenance.get("bank"),
        "clip_model_id": task.model_id,
        "features": {
            name: None if fs is None else {"rows": int(fs.x.shape[0]), "fingerprint": fp}
            for name, fs in splits.items()
            for fp in [features_fingerprint(fs)]
        },
        "fewshot_manifest": task.provenance.get("fewshot_manifest"),
        "code": code_version(),
    }
