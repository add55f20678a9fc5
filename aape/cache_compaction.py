"""Compaction of the image-feature cache: every split folder's small parts merged into large ones
(`prompt_banks.compaction`, the same protocol as the bank store's tables)."""

from __future__ import annotations

import os
from pathlib import Path

from aape.features import FEATURES
from prompt_banks.compaction import DEFAULT_GRACE_S, CompactReport, Stage, compact_folder
from prompt_banks.parts import folder_fs
from prompt_banks.paths import features_dir


def split_folders(home: str | os.PathLike[str] | None) -> list[Path | str]:
    """Every `<model>/<dataset>/<split>` folder of the cache, sorted (URLs under a URL home)."""
    root = features_dir(home)
    fs, path = folder_fs(root)
    if fs is None:
        return sorted(p for p in Path(path).glob("*/*/*") if p.is_dir())
    found = [p for p in fs.glob(f"{path}/*/*/*") if fs.isdir(p)]
    return sorted(fs.unstrip_protocol(p) for p in found)


def compact_features(
    home: str | os.PathLike[str] | None,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    on_stage: Stage | None = None,
) -> list[CompactReport]:
    """Compact every split folder of the feature cache under `home`."""
    return [
        compact_folder(folder, FEATURES, what="features", grace_s=grace_s, on_stage=on_stage)
        for folder in split_folders(home)
    ]
