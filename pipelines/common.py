"""Small helpers every flow module shares: the per-process CLIP, shards, run names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from aape import grid
from prompt_banks.clip import CLIPRef, LoadedCLIP
from prompt_banks.spec import CLIPSettings

T = TypeVar("T")


def clip_ref(settings: CLIPSettings) -> CLIPRef:
    return CLIPRef(settings.model, settings.pretrained)


def shared_clip(settings: CLIPSettings) -> LoadedCLIP:
    """The CLIP of `settings`, loaded once per process (a Ray worker or thread pool runs many
    shards; loading ViT-B/16 for each would cost more than the shard)."""
    return grid.shared_clip(clip_ref(settings))


def shards(items: Sequence[T], size: int) -> list[list[T]]:
    """`items` cut into consecutive lists of at most `size` (the unit of one mapped task)."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def short_model(settings: CLIPSettings) -> str:
    """A CLIP's name for run names: `ViT-B-16-openai`, `aape-tiny` (a weights file by its name)."""
    if settings.pretrained is None:
        return settings.model
    return f"{settings.model}-{Path(settings.pretrained).stem}"
