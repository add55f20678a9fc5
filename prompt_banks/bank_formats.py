"""The prompt-bank file formats `importers.import_file` reads: which one a file is (detected from
its content when not given) and the classes and texts it holds, checked.

Formats (auto-detected from the content when not given):
- `cupl`: CuPL's `{class: [sentence, ...]}`.
- `dclip`: DCLIP descriptors `{class: [phrase, ...]}`; each phrase becomes the sentence
  "{class}, which has/is {phrase}" with DCLIP's own rule; a class with no phrase is the bare
  class name, as DCLIP's code does.
- `clip-benchmark`: CLIP_benchmark's `--custom_template_file`, `{dataset: [template with {c}]}` or
  `{dataset: {class: [prompt, ...]}}`; the dataset is `--dataset`, else the domain name (or the
  only one in the file).
- `clip-benchmark-templates`: its `*_zeroshot_classification_templates.json`, `{dataset:
  [template with {c}]}`, expanded over a class list (`--classes`, which may be its
  `*_classnames.json`).
- `clip-benchmark-classnames`: its `*_classnames.json`, `{dataset: [class name]}`: a class list,
  not a bank; importing it is refused with the way to use it (`--classes`).
A `{key: [short phrase, ...]}` file with many phrases per key that is not recognised as either
is refused rather than guessed to be DCLIP (pass `--format`).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prompt_banks import clip_benchmark_files as cbf
from prompt_banks.errors import UserError
from prompt_banks.text import normalize_whitespace

# DCLIP descriptors are short noun phrases without a full stop; CuPL answers are sentences.
_DCLIP_MAX_MEDIAN_WORDS = 6
_DCLIP_MAX_PERIOD_SHARE = 0.5


def _check_class_map(data: Any, where: str) -> dict[str, list[str]]:
    """`data` as {class: [text, ...]}, or a UserError naming the first offending key."""
    if not isinstance(data, dict):
        raise UserError(
            f"{where}: top level is a {type(data).__name__}, expected an object "
            f'{{"class": ["text", ...]}}'
        )
    if not data:
        raise UserError(f'{where}: holds no classes; expected {{"class": ["text", ...]}}')
    for key, texts in data.items():
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            got = type(texts).__name__ if not isinstance(texts, list) else "a list with non-strings"
            raise UserError(
                f"{where}: class '{key}' holds {got}, expected a list of strings "
                f'({{"class": ["text", ...]}})'
            )
        if not normalize_whitespace(key):
            raise UserError(f"{where}: a class name is empty; give every class a name")
    return data


def detect_format(data: Any, path: str | os.PathLike[str] = "file") -> str:
    """One of `input_files.FORMATS`, from the content; a UserError when the content is ambiguous."""
    if isinstance(data, dict) and data:
        values = list(data.values())
        if any(isinstance(v, dict) for v in values):
            return "clip-benchmark"
        if cbf.is_templates(data):
            return "clip-benchmark-templates"
        if cbf.is_classnames(data):
            return "clip-benchmark-classnames"
        texts = [t for v in values if isinstance(v, list) for t in v if isinstance(t, str)]
        if any("{c}" in t for t in texts):
            return "clip-benchmark"
        if cbf.looks_like_name_lists(data):
            raise UserError(
                f"{path}: {len(texts) / len(data):.0f} short phrases per key look like class-name "
                f"lists, not DCLIP descriptors; pass --format (dclip, cupl, or "
                f"clip-benchmark-classnames for a class list)"
            )
        if texts:
            words = statistics.median(len(t.split()) for t in texts)
            periods = sum(t.rstrip().endswith(".") for t in texts) / len(texts)
            if words <= _DCLIP_MAX_MEDIAN_WORDS and periods < _DCLIP_MAX_PERIOD_SHARE:
                return "dclip"
    return "cupl"


@dataclass
class ParsedFile:
    """One parsed file: raw class name -> raw texts, and how to turn a raw text into sentences."""

    classes: dict[str, list[str]]
    fmt: str
    template_classes: bool = False  # clip-benchmark generic templates (texts hold "{c}")


def parse_file(
    data: Any, path: Path, fmt: str, dataset: str, classes: Sequence[str] | None
) -> ParsedFile:
    """The classes and texts of `data` (read from `path`) as format `fmt`: `dataset` picks a
    CLIP_benchmark file's entry, `classes` is what generic templates are expanded over."""
    if fmt in ("cupl", "dclip"):
        return ParsedFile(_check_class_map(data, str(path)), fmt)
    if fmt == "clip-benchmark-classnames":
        raise UserError(
            f"{path}: a CLIP_benchmark class-name list, not a prompt bank; pass it as --classes "
            f"{path.name} (with --dataset NAME) when importing a templates file"
        )
    if fmt == "clip-benchmark-templates":
        key, found = cbf.templates(data, dataset, path)
        return _expand(found, f"{path}[{key}]", fmt, classes)
    if not isinstance(data, dict) or not data:
        raise UserError(f'{path}: expected an object {{"dataset": [...]}} (CLIP_benchmark)')
    values = list(data.values())
    if not any(isinstance(v, dict) for v in values) and any(
        isinstance(t, str) and "{c}" not in t for v in values if isinstance(v, list) for t in v
    ):
        # {class: [prompt]} without the dataset level is CuPL's layout, which CLIP_benchmark reads.
        return ParsedFile(_check_class_map(data, str(path)), fmt)
    key = cbf.dataset_key(data, dataset, path, "prompts")
    entry = data[key]
    where = f"{path}[{key}]"
    if isinstance(entry, dict):
        return ParsedFile(_check_class_map(entry, where), fmt)
    if not isinstance(entry, list) or not entry or not all(isinstance(t, str) for t in entry):
        raise UserError(f"{where}: expected a non-empty list of templates with {{c}}")
    return _expand(entry, where, fmt, classes)


def _expand(found: list[str], where: str, fmt: str, classes: Sequence[str] | None) -> ParsedFile:
    """Generic templates over the class list (a name given twice is one class)."""
    if not classes:
        raise UserError(
            f"{where}: holds generic templates with {{c}}; pass --classes FILE to expand them"
        )
    return ParsedFile({c: list(found) for c in classes}, fmt, template_classes=True)
