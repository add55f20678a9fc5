"""Import public prompt-bank files into the store (their formats: `prompt_banks.bank_formats`),
and export a domain back to CuPL JSON.

Class names are canonicalised (`text.canonical_class_name`). Two keys of one file that collide
after that are an error naming both (never merged silently); a reference class list (given, or
recognised, e.g. ImageNet's) reports its classes that collide on one name ("sunglasses").
Nothing is written until the whole file has parsed and validated.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prompt_banks import schema, snapshots
from prompt_banks.atomic import write_json_atomic
from prompt_banks.bank_formats import ParsedFile, detect_format, parse_file
from prompt_banks.errors import UserError
from prompt_banks.input_files import FORMATS, KNOWN_CLASS_LISTS, load_json
from prompt_banks.store import BankStore, utc_now
from prompt_banks.text import canonical_class_name, is_fragment, normalize_whitespace, split_fused

# A reference list is recognised when this share of the file's classes belongs to it.
_RECOGNISE_SHARE = 0.95

DROP_DUPLICATE = "duplicate"
DROP_FRAGMENT = "fragment"
DROP_EMPTY = "empty"


@dataclass
class ImportReport:
    path: str
    domain: str
    fmt: str
    classes: int
    rows: int  # description rows made from the file
    written: int  # rows new to the store (0 when the file was imported before)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    # Canonical name -> the reference classes that share it (the file can hold only one).
    collisions: dict[str, list[str]] = field(default_factory=dict)
    reference: str | None = None  # the class list compared against
    missing: list[str] = field(default_factory=list)  # reference classes absent from the file
    extra: list[str] = field(default_factory=list)  # file classes absent from the reference
    empty_classes: list[str] = field(default_factory=list)  # DCLIP classes with no descriptor
    unused_renames: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> list[str]:
        """Human-readable lines for the CLI."""
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        lines = [
            f"{self.path} ({self.fmt}) -> domain '{self.domain}': {self.classes} classes, "
            f"{self.rows} rows, {self.written} new; dropped: {dropped}"
        ]
        if self.reference:
            lines.append(
                f"compared with the {self.reference} class list: {len(self.missing)} classes "
                f"missing, {len(self.extra)} extra, {len(self.collisions)} collisions"
            )
        for name, members in sorted(self.collisions.items()):
            lines.append(f"collision: '{name}' names {len(members)} classes: {members}")
        for label, names in (("missing", self.missing), ("extra", self.extra)):
            if names:
                lines.append(f"{label}: {names[:20]}{' ...' if len(names) > 20 else ''}")
        if self.empty_classes:
            lines.append(
                f"classes without descriptors (kept as the bare name): {self.empty_classes}"
            )
        if self.unused_renames:
            lines.append(f"rename keys not in the file: {self.unused_renames}")
        return lines


def display_name(raw_class_name: str) -> str:
    """A class name as it reads in a sentence: underscores as spaces, case kept."""
    return normalize_whitespace(raw_class_name.replace("_", " "))


def dclip_sentence(class_name: str, phrase: str) -> str:
    """DCLIP's descriptor sentence: "{class}, which is/has {phrase}" by the phrase's first word."""
    first = phrase.split(" ", 1)[0].lower()
    if first in ("a", "an", "used"):
        link = "which is"
    elif first in ("has", "often", "typically", "may", "can"):
        link = "which"
    else:
        link = "which has"
    return f"{class_name}, {link} {phrase}"


def _apply_renames(
    source: dict[str, list[str]], rename: Mapping[str, str] | None
) -> tuple[dict[str, list[str]], list[str]]:
    if not rename:
        return source, []
    # An exact key wins; a key spelled differently matches by canonical name ("faces" ~ "Faces").
    by_canon = {canonical_class_name(k): k for k in rename if k not in source}
    used: set[str] = set()
    out: dict[str, list[str]] = {}
    for raw, texts in source.items():
        key = raw if raw in rename else by_canon.get(canonical_class_name(raw))
        if key is not None:
            used.add(key)
        out.setdefault(rename[key] if key is not None else raw, []).extend(texts)
    return out, sorted(set(rename) - used)


def _check_collisions(path: Path, names: list[str]) -> None:
    groups: dict[str, list[str]] = defaultdict(list)
    for n in names:
        groups[canonical_class_name(n)].append(n)
    clashes = {c: ns for c, ns in groups.items() if len(ns) > 1}
    if clashes:
        listed = "; ".join(f"'{c}' <- {ns}" for c, ns in sorted(clashes.items()))
        raise UserError(
            f"{path}: class names collide after canonicalisation: {listed}; "
            f"rename one of each with --rename MAP"
        )


def _compare_reference(
    names: list[str], classes: Sequence[str] | None
) -> tuple[str | None, dict[str, list[str]], list[str], list[str]]:
    """Which class list the file is checked against, the list's classes that share one name
    (collisions), and the classes missing from the file and extra in it (canonical names)."""
    reference: list[str] | None = list(classes) if classes else None
    label = "given" if classes else None
    canon = {canonical_class_name(n) for n in names}
    if reference is None:
        for name, (size, loader) in KNOWN_CLASS_LISTS.items():
            if len(canon) < _RECOGNISE_SHARE * size:
                continue
            known = loader()
            known_canon = {canonical_class_name(k) for k in known}
            if canon and len(canon & known_canon) >= _RECOGNISE_SHARE * len(canon):
                reference, label = known, name
                break
    if reference is None:
        return None, {}, [], []
    groups: dict[str, list[str]] = defaultdict(list)
    for i, c in enumerate(reference):
        groups[canonical_class_name(c)].append(f"#{i} {c}")
    collisions = {c: members for c, members in groups.items() if len(members) > 1}
    missing = sorted(c for c in groups if c not in canon)
    return label, collisions, missing, sorted(canon - set(groups))


def _rows_for_class(
    domain: str, raw_name: str, texts: list[str], source: ParsedFile
) -> tuple[list[dict[str, Any]], Counter[str]]:
    canon = canonical_class_name(raw_name)
    shown = display_name(raw_name)
    now = utc_now()
    rows: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    first_seen: dict[str, int] = {}

    def add(index: int, raw: str | None, clean: str | None, piece: int, why: str | None) -> None:
        status, error = "ok", None
        if why is None and clean is not None and clean in first_seen:
            why = f"{DROP_DUPLICATE} of sample {first_seen[clean]}"
        if why is not None:
            status, error = "dropped", why
            dropped[why.split(" ", 1)[0]] += 1
        elif clean is not None:
            first_seen[clean] = index
        rows.append(
            {
                "row_key": schema.description_row_key(
                    domain=domain,
                    class_name=canon,
                    source="import",
                    question=None,
                    sample_index=index,
                    llm_model=None,
                    llm_params=None,
                    raw_text=raw,
                    piece=piece,
                ),
                "domain": domain,
                "class_name": canon,
                "raw_class_name": raw_name,
                "source": "import",
                "question": None,
                "sample_index": index,
                "llm_model": None,
                "llm_params": None,
                "raw_text": raw,
                "clean_text": clean,
                "status": status,
                "error": error,
                "created_at": now,
            }
        )

    for index, raw in enumerate(texts):
        if source.template_classes:
            pieces = [normalize_whitespace(raw.replace("{c}", shown))]
        elif source.fmt == "dclip":
            phrase = normalize_whitespace(raw)
            pieces = [dclip_sentence(shown, phrase)] if phrase else []
        else:
            pieces = split_fused(raw)
        if not pieces:
            add(index, raw, None, 0, DROP_EMPTY)
        for piece_index, piece in enumerate(pieces):
            fragment = len(pieces) > 1 and is_fragment(piece)
            add(index, raw, piece, piece_index, DROP_FRAGMENT if fragment else None)
    if source.fmt == "dclip" and not any(r["status"] == "ok" for r in rows):
        # DCLIP's own code falls back to the bare class name when a class has no descriptor.
        add(len(texts), None, shown, 0, None)
    return rows, dropped


def import_file(
    store: BankStore,
    path: str | os.PathLike[str],
    *,
    domain: str,
    fmt: str | None = None,
    rename: Mapping[str, str] | None = None,
    classes: Sequence[str] | None = None,
    dataset: str | None = None,
) -> ImportReport:
    """Import one file into `domain`. Re-importing the same file writes nothing.

    `rename` maps a file's class names (exact or canonical) to new ones, e.g. CuPL's names to
    CoOp's. `classes` is the reference class list to report collisions and missing classes
    against (recognised automatically for ImageNet) and the classes that generic
    CLIP_benchmark templates are expanded over. `dataset` picks the entry of a CLIP_benchmark
    per-dataset file (default: `domain`, or the file's only dataset)."""
    path = Path(path)
    domain = normalize_whitespace(domain)
    if not domain:
        raise UserError("domain: empty; pass --domain NAME")
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"format: '{fmt}' is not one of {', '.join(FORMATS)}")
    data = load_json(path)
    fmt = fmt or detect_format(data, path)
    source = parse_file(data, path, fmt, dataset or domain, classes)
    renamed, unused = _apply_renames(source.classes, rename)
    source.classes = renamed
    names = list(renamed)
    _check_collisions(path, names)
    empty = [n for n, texts in renamed.items() if not texts]
    if empty and fmt != "dclip":
        raise UserError(
            f"{path}: class '{empty[0]}' has no texts ({len(empty)} such); remove it or add texts"
        )
    rows: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    bare: list[str] = []  # DCLIP classes without a usable descriptor
    for raw_name, texts in renamed.items():
        class_rows, class_dropped = _rows_for_class(domain, raw_name, texts, source)
        if not any(r["status"] == "ok" for r in class_rows):
            raise UserError(
                f"{path}: class '{raw_name}' has no usable text (all empty); remove it or add texts"
            )
        rows.extend(class_rows)
        dropped.update(class_dropped)
        if any(r["raw_text"] is None for r in class_rows):
            bare.append(raw_name)
    label, collisions, missing, extra = _compare_reference(names, classes)
    written = store.append_descriptions(rows)
    if written:
        snapshots.take(store, domain)  # the domain's new state, for `aape bank history`
    return ImportReport(
        path=str(path),
        domain=domain,
        fmt=fmt,
        classes=len(names),
        rows=len(rows),
        written=written,
        dropped=dict(dropped),
        collisions=collisions,
        reference=label,
        missing=missing,
        extra=extra,
        empty_classes=bare,
        unused_renames=unused,
    )


def export_cupl(store: BankStore, domain: str, out_path: str | os.PathLike[str]) -> dict[str, int]:
    """Write the usable descriptions of `domain` as CuPL JSON {class: [sentence, ...]}
    (atomically). Returns {"classes": C, "texts": N}."""
    from prompt_banks.queries import class_texts

    texts = class_texts(store, domain)
    if not texts:
        raise UserError(
            f"domain: '{domain}' has no descriptions in {store.root}; import some first"
        )
    out = Path(out_path)
    try:
        write_json_atomic(texts, out, ensure_ascii=False, indent=1)
    except OSError as exc:
        raise UserError(f"{out}: cannot write ({exc.strerror}); pick a writable path") from exc
    return {"classes": len(texts), "texts": sum(len(v) for v in texts.values())}
