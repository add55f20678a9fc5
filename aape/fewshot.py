"""Few-shot manifests and CoCoOp's base/new class split.

A manifest is a pure function of (split records, K, seed): for each label, the image ids of that
label are sorted, shuffled by a private `random.Random("fewshot:<seed>:<label>")` and the first K
kept. Consequences: the input order of the records does not matter; a class's pick does not
depend on other classes; and the picks are nested (the 1-shot images are among the 2-shot ones,
and so on), so a shots curve varies one thing at a time.

Asking for more shots than a class has is an error by default (`require_shots`, naming the
classes and their counts). The explicit policy `all-available` keeps every image of such a class
(as CoOp does); the manifest records the policy and lists those labels in `short_classes`.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import fsspec

from aape.datasets.base import ImageRecord
from prompt_banks.atomic import write_text_atomic
from prompt_banks.errors import UserError
from prompt_banks.paths import aape_home, join
from prompt_banks.schema import stable_hash

SHOTS_POLICIES = ("error", "all-available")
SHOWN_CLASSES = 5  # classes named in the error


@dataclass(frozen=True)
class FewShotManifest:
    dataset: str
    split: str
    shots: int
    seed: int
    image_ids: dict[int, list[str]]  # label -> chosen ids, in pick order
    short_classes: list[int]  # labels with fewer than `shots` images
    source_hash: str  # hash of the (id, label) pairs the pick was drawn from
    policy: str = "error"  # how classes with fewer than `shots` images were treated

    def selected(self) -> set[str]:
        return {i for ids in self.image_ids.values() for i in ids}

    def to_json(self) -> str:
        payload = asdict(self)
        payload["image_ids"] = {str(k): v for k, v in sorted(self.image_ids.items())}
        return json.dumps(payload, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FewShotManifest:
        payload = json.loads(text)
        payload["image_ids"] = {int(k): v for k, v in payload["image_ids"].items()}
        return cls(**payload)


def fewshot_manifest(
    records: Sequence[ImageRecord],
    shots: int,
    seed: int,
    *,
    dataset: str = "",
    split: str = "train",
    policy: str = "error",
) -> FewShotManifest:
    """Choose `shots` images per class from `records` (see the module doc for the rule); the
    caller checks `policy` against the counts first (`require_shots`)."""
    if shots < 1:
        raise UserError(f"shots: {shots} is not a positive number of images per class")
    if policy not in SHOTS_POLICIES:
        raise UserError(f"--shots-policy: '{policy}' is unknown; use {' or '.join(SHOTS_POLICIES)}")
    by_label: dict[int, list[str]] = {}
    for r in records:
        by_label.setdefault(r.label, []).append(r.image_id)
    chosen: dict[int, list[str]] = {}
    for label, ids in sorted(by_label.items()):
        ordered = sorted(set(ids))
        random.Random(f"fewshot:{seed}:{label}").shuffle(ordered)
        chosen[label] = ordered[:shots]
    return FewShotManifest(
        dataset=dataset,
        split=split,
        shots=shots,
        seed=seed,
        image_ids=chosen,
        short_classes=[label for label, ids in chosen.items() if len(ids) < shots],
        source_hash=stable_hash(sorted((r.image_id, r.label) for r in records)),
        policy=policy,
    )


def short_classes(records: Sequence[ImageRecord], shots: int, n_classes: int) -> dict[int, int]:
    """Labels 0..n_classes-1 with fewer than `shots` distinct images in `records` -> that count
    (a class with none counts 0)."""
    counts = Counter(label for _, label in {(r.image_id, r.label) for r in records})
    return {c: counts.get(c, 0) for c in range(n_classes) if counts.get(c, 0) < shots}


def require_shots(
    short: dict[int, int],
    shots: int,
    policy: str,
    *,
    dataset: str,
    describe: Callable[[int], str] = str,
) -> None:
    """Refuse a K-shot run on classes with fewer than K images unless `policy` allows it."""
    if policy not in SHOTS_POLICIES:
        raise UserError(f"--shots-policy: '{policy}' is unknown; use {' or '.join(SHOTS_POLICIES)}")
    if not short or policy == "all-available":
        return
    fewest = sorted(short.items(), key=lambda item: (item[1], item[0]))
    shown = ", ".join(f"{describe(label)} has {n}" for label, n in fewest[:SHOWN_CLASSES])
    if len(fewest) > SHOWN_CLASSES:
        shown += f" and {len(fewest) - SHOWN_CLASSES} more"
    fewer = f"pass --shots {fewest[0][1]} or fewer, or " if fewest[0][1] >= 1 else ""
    classes = f"{len(short)} class has" if len(short) == 1 else f"{len(short)} classes have"
    raise UserError(
        f"shots: {shots} training images per class asked, but {classes} fewer in {dataset} "
        f"({shown}); {fewer}pass --shots-policy all-available to train on the images they have "
        "(the run records it)"
    )


def manifest_path(
    home: str | os.PathLike[str] | None, dataset: str, shots: int, seed: int
) -> Path | str:
    """Where a manifest rests: a Path, or a URL under an fsspec URL home."""
    return join(aape_home(home), "fewshot", dataset, f"shots{shots}-seed{seed}.json")


def write_manifest(manifest: FewShotManifest, home: str | os.PathLike[str] | None) -> Path | str:
    """Publish the manifest as a JSON artifact (temp file + rename; under a URL home one object
    write, which appears whole or not at all); returns its path or URL."""
    path = manifest_path(home, manifest.dataset, manifest.shots, manifest.seed)
    if isinstance(path, str):
        with fsspec.open(path, "w", encoding="utf-8", auto_mkdir=True) as f:
            f.write(manifest.to_json())
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(manifest.to_json(), path)


def base_new_split(n_classes: int) -> tuple[list[int], list[int]]:
    """CoCoOp's split: labels sorted, base = the first ceil(C/2), new = the rest."""
    if n_classes < 2:
        raise UserError(f"base/new: needs at least 2 classes, got {n_classes}")
    cut = math.ceil(n_classes / 2)
    return list(range(cut)), list(range(cut, n_classes))
