"""Image files that are missing or cannot be decoded, against an explicit allowance.

A run reads every image its splits list, or fails (exit 2) with one line: how many image files
are missing or unreadable, the first few paths, and the fix. `--max-missing N` allows at most N
such images in one command; they are left out, the few-shot pick is drawn again among the images
that exist (a class keeps K shots when it has K usable images), and the run records how many
images of each split it used (`ImageUse`).

Only images whose features are not cached yet are checked: a file removed after its features
were computed does not stop a run.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aape.datasets.base import DEFAULT_VIEWS, ImageRecord
from aape.features import ExtractReport, extract_records, missing_jobs
from prompt_banks.clip import LoadedCLIP
from prompt_banks.errors import UserError

SHOWN_PATHS = 3  # paths named in the error
Key = tuple[str, str]  # (split, image id)


def key_of(record: ImageRecord) -> Key:
    return record.split, record.image_id


def where(record: ImageRecord) -> str:
    """The path of a file record, else its id (bytes and arrays have no file)."""
    return str(record.source) if isinstance(record.source, str | Path) else record.image_id


def is_absent(record: ImageRecord) -> bool:
    """Whether the record names a file that does not exist (in-memory images never are)."""
    return isinstance(record.source, str | Path) and not os.path.isfile(record.source)


@dataclass
class ImageUse:
    """What a command read: images used per split, and the ones left out (missing or
    unreadable) under `max_missing`."""

    max_missing: int = 0
    used: dict[str, int] = field(default_factory=dict)
    unusable: dict[Key, str] = field(default_factory=dict)  # (split, id) -> path
    checked: set[Key] = field(default_factory=set)

    def leave_out(self, dataset: str, bad: dict[Key, str]) -> None:
        """Count `bad` against the allowance; a UserError when it is used up."""
        self.unusable.update(bad)
        n = len(self.unusable)
        if n <= self.max_missing:
            return
        paths = list(self.unusable.values())
        shown = ", ".join(paths[:SHOWN_PATHS]) + (", ..." if n > SHOWN_PATHS else "")
        allowed = f" (allowed: {self.max_missing})" if self.max_missing else ""
        raise UserError(
            f"images: {n} of {len(self.checked)} image files of {dataset} are missing or "
            f"unreadable{allowed}: {shown}; restore them (download or extract the dataset "
            f"again under --data-root) or pass --max-missing {n} to run without them"
        )

    def as_record(self) -> dict[str, Any]:
        """The run record's view: images used and left out per split, and the allowance."""
        missing = Counter(split for split, _ in self.unusable)
        return {
            "images": dict(self.used),
            "missing_images": {s: missing.get(s, 0) for s in self.used | dict(missing)},
            "max_missing": self.max_missing,
        }


def extract_usable(
    select: Callable[[set[Key]], Sequence[ImageRecord]],
    clip: LoadedCLIP,
    home: str | os.PathLike[str] | None,
    *,
    dataset: str,
    max_missing: int = 0,
    n_views: int = DEFAULT_VIEWS,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[list[ImageRecord], ExtractReport, ImageUse]:
    """Cache the features of the records `select(unusable)` returns, leaving out missing and
    unreadable images within `max_missing` (see the module doc).

    `select` gets the (split, id) keys found unusable so far and returns the records to read
    without them (a few-shot pick draws again). Returns the records finally read (all cached
    now), the extraction report and the `ImageUse`."""
    if max_missing < 0:
        raise UserError(f"--max-missing: {max_missing} must be 0 or more images")
    use = ImageUse(max_missing=max_missing)
    total = ExtractReport(dataset=dataset, model_id=clip.model_id)
    while True:
        records = list(select(set(use.unusable)))
        use.checked.update(key_of(r) for r in records)
        jobs, _ = missing_jobs(records, home, clip.model_id, dataset, n_views)
        absent = {key_of(r): where(r) for r, _ in jobs if is_absent(r)}
        if absent:  # draw again before encoding anything
            use.leave_out(dataset, absent)
            continue
        report = extract_records(
            records,
            clip,
            home,
            dataset=dataset,
            n_views=n_views,
            batch_size=batch_size,
            progress=progress,
        )
        _add(total, report)
        by_path: dict[str, list[Key]] = {}
        for r in records:  # one file may back records of two splits
            by_path.setdefault(where(r), []).append(key_of(r))
        unreadable = {k: p for p in report.unreadable for k in by_path.get(p, [])}
        if not unreadable:
            use.used = dict(Counter(r.split for r in records))
            return records, total, use
        use.leave_out(dataset, unreadable)


def _add(total: ExtractReport, report: ExtractReport) -> None:
    """Sum the work of one more pass; `cached` is the last pass's (it sees the earlier ones)."""
    cached = report.cached
    total.merge(report)
    total.cached = cached


def without(records: Iterable[ImageRecord], unusable: set[Key]) -> list[ImageRecord]:
    """`records` less the unusable ones, in order."""
    return [r for r in records if key_of(r) not in unusable]
