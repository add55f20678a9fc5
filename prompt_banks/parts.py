"""The live parts of an append-only Parquet folder: what readers read, before and after compaction.

Writers publish `part-<time>-<uuid>.parquet` files (`prompt_banks.atomic.publish_part`). A
compaction (`prompt_banks.compaction`) publishes a merged part,
`part-<time>-<uuid>.merged.parquet`, whose footer records two things:

- `aape.replaces`: the names of every part it replaces (transitively: a merged part that absorbs
  an earlier merged part also replaces that part's inputs);
- `aape.origins`: in row order, `[[origin, rows], ...]`, the name of the writer's part each run of
  rows came from. Rows never change, so a row's origin is its identity across compactions; this
  is what lets a snapshot (a list of origins) be read after its parts were merged.

A reader lists `*.parquet` and drops every part that a visible merged part replaces. A merged
part is published whole (temp file, rename) before any input is deleted, so at every instant the
live parts hold each row exactly once: before the publish, the inputs; after it, the merged part
(the inputs, still on disk until deleted, are no longer listed).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from prompt_banks.paths import is_url

MERGED_SUFFIX = ".merged.parquet"
REPLACES_KEY = b"aape.replaces"
ORIGINS_KEY = b"aape.origins"


@dataclass(frozen=True)
class Part:
    """One published part: `path` as its filesystem names it (a local path, or the path inside
    `fs` for a URL folder), `url` as DuckDB reads it, and the runs of rows it holds by origin."""

    path: str
    url: str
    origins: tuple[tuple[str, int], ...]  # (origin part name, rows), in row order
    replaces: frozenset[str]

    @property
    def name(self) -> str:
        return part_basename(self.path)

    @property
    def merged(self) -> bool:
        return self.name.endswith(MERGED_SUFFIX)


def part_basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def folder_fs(folder: Path | str) -> tuple[fsspec.AbstractFileSystem | None, str]:
    """(fsspec filesystem or None for a local folder, the folder's path in it)."""
    if not is_url(folder):
        return None, str(folder).removeprefix("file://")
    fs, path = fsspec.core.url_to_fs(str(folder))
    return fs, path.rstrip("/")


def published(folder: Path | str) -> tuple[list[str], fsspec.AbstractFileSystem | None]:
    """Every published part (`*.parquet`, never a hidden `.tmp` in flight), oldest first, merged
    or replaced alike; with the folder's fsspec filesystem (None when local)."""
    fs, path = folder_fs(folder)
    if fs is None:
        local = Path(path)
        return (sorted(str(p) for p in local.glob("*.parquet")) if local.is_dir() else []), None
    return sorted(fs.glob(f"{path}/*.parquet")), fs


@functools.lru_cache(maxsize=4096)
def _merged_meta(path: str, protocol: str) -> tuple[tuple[tuple[str, int], ...], frozenset[str]]:
    """Origins and replaced names from a merged part's footer (parts never change: cached)."""
    if protocol:
        fs = fsspec.filesystem(protocol)
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata.metadata or {}
    else:
        meta = pq.read_metadata(path).metadata or {}
    origins = tuple((str(o), int(n)) for o, n in json.loads(meta.get(ORIGINS_KEY, b"[]")))
    return origins, frozenset(json.loads(meta.get(REPLACES_KEY, b"[]")))


def _protocol(fs: fsspec.AbstractFileSystem | None) -> str:
    if fs is None:
        return ""
    proto = fs.protocol
    return proto if isinstance(proto, str) else proto[0]


def describe(path: str, fs: fsspec.AbstractFileSystem | None) -> Part:
    """A Part for one published path; a writer's part is one origin (itself) of unknown size."""
    url = path if fs is None else fs.unstrip_protocol(path)
    name = part_basename(path)
    if name.endswith(MERGED_SUFFIX):
        try:
            origins, replaces = _merged_meta(path, _protocol(fs))
            return Part(path, url, origins, replaces)
        except (OSError, ValueError, pa.ArrowException):
            pass  # damaged: read as a part of its own, which the footer check names
    return Part(path, url, ((name, -1),), frozenset())


def live_parts(folder: Path | str) -> tuple[list[Part], fsspec.AbstractFileSystem | None]:
    """The parts a reader reads, oldest first: every published part that no visible merged part
    replaces."""
    paths, fs = published(folder)
    parts = [describe(p, fs) for p in paths]
    replaced = set().union(*(p.replaces for p in parts if p.merged))
    return [p for p in parts if p.name not in replaced], fs


def live_paths(folder: Path | str) -> tuple[list[str], fsspec.AbstractFileSystem | None]:
    """`live_parts` as paths (what pyarrow reads with the returned filesystem)."""
    parts, fs = live_parts(folder)
    return [p.path for p in parts], fs


def name_time_ns(name: str) -> int | None:
    """The publish-side clock of a part name (`part-<ns>-...`), or None for another name."""
    stem = name.lstrip(".").removeprefix("part-").split("-", 1)[0]
    return int(stem) if stem.isdigit() else None


def remove(path: str, fs: fsspec.AbstractFileSystem | None) -> bool:
    """Delete one file; False when it was already gone (a second compaction got there first)."""
    try:
        if fs is None:
            os.unlink(path)
        else:
            fs.rm(path)
    except FileNotFoundError:
        return False
    return True
