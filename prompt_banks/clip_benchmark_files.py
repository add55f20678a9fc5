"""CLIP_benchmark's per-dataset JSON files, told apart and read as what they are.

CLIP_benchmark keys its language files by dataset name:
- `<lang>_classnames.json`: `{dataset: [class name, ...]}`, a class list per dataset (not a
  prompt bank: its lists are names, not texts about the key);
- `<lang>_zeroshot_classification_templates.json`: `{dataset: [template with "{c}", ...]}`;
- a `--custom_template_file` may also hold `{dataset: {class: [prompt, ...]}}` (CuPL's prompts).

Real quirks the readers keep: a class name may be empty (`clevr_closest_object_distance`) or
hold a double space (`head of a  crocodile`); a list may name a class twice (ImageNet's
`sunglasses`, `missile`); a template may be the bare `"{c}"` or have no full stop.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from prompt_banks.errors import UserError

PLACEHOLDER = "{c}"
# Dataset keys of CLIP_benchmark's English class-name and template files (its identifiers).
KNOWN_DATASETS = frozenset(
    {
        "caltech101", "caltech101_vtab", "cars", "cifar10", "cifar100",
        "clevr_closest_object_distance", "clevr_count_all", "country211", "diabetic_retinopathy",
        "dmlab", "dsprites_label_orientation", "dsprites_label_x_position", "dtd", "dummy",
        "eurosat", "fairface", "fairface_gender", "fairface_race", "fer2013", "fgvc_aircraft",
        "flowers", "food101", "gtsrb", "imagenet1k", "kitti_closest_vehicle_distance", "mnist",
        "pcam", "pets", "renderedsst2", "resisc45", "smallnorb_label_azimuth",
        "smallnorb_label_elevation", "stl10", "sun397", "svhn", "voc2007", "voc2007_multilabel",
    }
)  # fmt: skip
# DCLIP gives a handful of descriptors per class (at most 16 in its published files); a list of
# many more short phrases per key is a list of names.
_DESCRIPTORS_PER_KEY_MAX = 20
_NAME_MAX_MEDIAN_WORDS = 6


def _string_lists(data: Any) -> dict[str, list[str]] | None:
    """`data` when it is a non-empty {key: [str, ...]}, else None."""
    if not isinstance(data, dict) or not data:
        return None
    if not all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in data.values()):
        return None
    return data


def is_templates(data: Any) -> bool:
    """Every text holds "{c}": a template file (`{dataset: [template, ...]}`)."""
    lists = _string_lists(data)
    texts = [t for v in (lists or {}).values() for t in v]
    return bool(texts) and all(PLACEHOLDER in t for t in texts)


def is_classnames(data: Any) -> bool:
    """A CLIP_benchmark class-name file: most keys are its dataset names and no text is a
    template."""
    lists = _string_lists(data)
    if lists is None or any(PLACEHOLDER in t for v in lists.values() for t in v):
        return False
    return sum(k in KNOWN_DATASETS for k in lists) * 2 >= len(lists)


def looks_like_name_lists(data: Any) -> bool:
    """Many short phrases per key: the shape of a class-name list, not of DCLIP descriptors."""
    lists = _string_lists(data)
    if lists is None:
        return False
    texts = [t for v in lists.values() for t in v]
    if not texts or len(texts) / len(lists) <= _DESCRIPTORS_PER_KEY_MAX:
        return False
    return statistics.median(len(t.split()) for t in texts) <= _NAME_MAX_MEDIAN_WORDS


def dataset_key(data: dict[str, Any], dataset: str, path: Path, what: str) -> str:
    """The key of `dataset` in a per-dataset file, or the only key; else a UserError."""
    if dataset in data:
        return dataset
    if len(data) == 1:
        return next(iter(data))
    shown = ", ".join(sorted(data)[:12]) + (" ..." if len(data) > 12 else "")
    raise UserError(
        f"{path}: holds {what} for datasets [{shown}], none named '{dataset}'; "
        f"pass --dataset as one of them"
    )


def _entry(data: Any, dataset: str, path: Path, what: str, layout: str) -> tuple[str, list[str]]:
    """(key, list) of `dataset` in a `{dataset: [str, ...]}` file holding `what`."""
    lists = _string_lists(data)
    if lists is None:
        raise UserError(f"{path}: expected CLIP_benchmark {what} {layout}")
    key = dataset_key(lists, dataset, path, what)
    if not lists[key]:
        raise UserError(f"{path}[{key}]: holds no {what}")
    return key, lists[key]


def class_names(data: Any, dataset: str, path: Path) -> list[str]:
    """One dataset's class list from a class-name file, in its order (repeats kept)."""
    key, names = _entry(data, dataset, path, "class names", '{"dataset": ["name", ...]}')
    for i, name in enumerate(names):
        if not name.strip():
            raise UserError(
                f"{path}[{key}]: class #{i} has an empty name; give it a name in a copy of "
                f"the file (CLIP_benchmark's own list has one for this dataset)"
            )
    return names


def templates(data: Any, dataset: str, path: Path) -> tuple[str, list[str]]:
    """(dataset key, its templates) from a template file; each template must hold "{c}"."""
    key, found = _entry(data, dataset, path, "templates", '{"dataset": ["... {c}", ...]}')
    for t in found:
        if PLACEHOLDER not in t:
            raise UserError(
                f"{path}[{key}]: template {t!r} has no {PLACEHOLDER}; every template names "
                f"the class with {PLACEHOLDER}"
            )
    return key, found
