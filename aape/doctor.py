"""`aape doctor`: check every store and cache under a home; on request, move what is damaged
to `<home>/quarantine/<UTC time>/<its path under the home>`.

Checked: the bank store's descriptions, embeddings and captions parts and the feature cache's
parts (read whole: every row group and row, see `prompt_banks.integrity.deep_check`), few-shot
manifests, and on a local home the runs' result.json / metrics.json, their checkpoint.pt
(training and retrieval runs), the captioning runs' prefix.pt, and the artifacts (manifest
checksums, config, weights), the retrieval artifacts of `aape vl train` under runs/ among them.
Under an fsspec URL home only the first three exist.

Quarantine loses no good row: when some row groups or rows of a damaged part can still be read,
they are first published as a new part of the same table (an atomic publish, like any write),
and only then is the damaged file moved (a rename on a local home). A crash in between leaves the
salvaged rows twice, which readers already see once (the newest row per key wins).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
from tqdm.auto import tqdm

from aape.artifact import read_artifact
from aape.features import FEATURES
from aape.fewshot import FewShotManifest
from aape.torch_files import checkpoint_dict
from aape.train import CHECKPOINT_KEYS, CHECKPOINT_NAME
from aape.vl.bank import CAPTIONS, CAPTIONS_DIR
from aape.vl.gen_run import RUN_FILE, read_run_file
from aape.vl.inference import load_retrieval_artifact
from prompt_banks import schema
from prompt_banks.atomic import publish_part
from prompt_banks.errors import UserError
from prompt_banks.integrity import damaged_part_error, deep_check
from prompt_banks.paths import aape_home, is_url

QUARANTINE_DIR = "quarantine"
# (what, glob under the home, schema) of every Parquet table the tool writes.
PARQUET_TABLES: tuple[tuple[str, str, pa.Schema], ...] = (
    ("bank descriptions", "banks/descriptions/*.parquet", schema.DESCRIPTIONS),
    ("bank embeddings", "banks/embeddings/*.parquet", schema.EMBEDDINGS),
    ("bank captions", f"banks/{CAPTIONS_DIR}/*.parquet", CAPTIONS),
    ("feature cache", "features/*/*/*/part-*.parquet", FEATURES),
)


@dataclass
class Finding:
    """One damaged file (or artifact folder) and, after --quarantine, what was done."""

    kind: str
    path: str
    problem: str
    action: str | None = None
    fixed: bool = False

    def line(self) -> str:
        done = f" -> {self.action}" if self.action else ""
        return f"{self.kind}: {self.path}: {self.problem}{done}"


@dataclass
class DoctorReport:
    home: str
    checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    quarantine: str | None = None  # the folder this run moved files to

    @property
    def remaining(self) -> list[Finding]:
        return [f for f in self.findings if not f.fixed]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "remaining": len(self.remaining)}

    def summary(self) -> str:
        moved = len(self.findings) - len(self.remaining)
        where = f", {moved} quarantined under {self.quarantine}" if moved else ""
        return (
            f"checked {self.checked} files under {self.home}: {len(self.findings)} damaged"
            f"{where}, {len(self.remaining)} left"
        )


class _Home:
    """The home as an fsspec filesystem: local paths stay plain paths, URLs stay URLs."""

    def __init__(self, home: str | Path | None) -> None:
        root = aape_home(home)
        self.is_url = is_url(root)
        self.fs, path = fsspec.core.url_to_fs(str(root))
        self.root = path.rstrip("/")
        self.shown_root = str(root)

    def glob(self, pattern: str) -> list[str]:
        return sorted(self.fs.glob(f"{self.root}/{pattern}"))

    def shown(self, path: str) -> str:
        return self.fs.unstrip_protocol(path) if self.is_url else path

    def part_fs(self) -> fsspec.AbstractFileSystem | None:
        return self.fs if self.is_url else None

    def folders(self, pattern: str) -> list[str]:
        """The folders matching `pattern` (artifacts: only ever written to a local home)."""
        return [] if self.is_url else [p for p in self.glob(pattern) if self.fs.isdir(p)]

    def relative(self, path: str) -> str:
        return path[len(self.root) :].lstrip("/")

    def move(self, path: str, quarantine: str) -> str:
        """Move `path` under `quarantine`, keeping its path below the home; returns the target."""
        target = f"{quarantine}/{self.relative(path)}"
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(path, target, recursive=self.fs.isdir(path))
        return target


def _parquet_findings(home: _Home, quarantine: Callable[[], str] | None) -> Iterator[Finding]:
    for kind, pattern, table_schema in PARQUET_TABLES:
        paths = home.glob(pattern)
        for path in tqdm(paths, desc=f"doctor {kind}", unit="part", leave=False, disable=not paths):
            report = deep_check(home.shown(path), table_schema, home.part_fs())
            if report.problem is None:
                continue
            finding = Finding(kind, home.shown(path), report.problem)
            if quarantine is not None:
                _quarantine_part(home, path, report.good, report.rows, finding, quarantine())
            yield finding


def _quarantine_part(
    home: _Home, path: str, good: pa.Table | None, rows: int, finding: Finding, quarantine: str
) -> None:
    salvaged = ""
    if good is not None and good.num_rows:
        folder = home.shown(path.rsplit("/", 1)[0])
        new = publish_part(good, folder, what="doctor")
        salvaged = f"salvaged {good.num_rows} of {rows} rows into {new}; "
    target = home.move(path, quarantine)
    finding.action = f"{salvaged}moved to {home.shown(target)}"
    finding.fixed = True


def _json_problem(
    path: str, fs: fsspec.AbstractFileSystem, check: Callable[[str], Any]
) -> str | None:
    try:
        with fs.open(path, "r", encoding="utf-8") as f:
            check(f.read())
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return f"unreadable ({type(exc).__name__}: {' '.join(str(exc).split())})"
    return None


def _json_object(text: str) -> None:
    if not isinstance(json.loads(text), dict):
        raise TypeError("not a JSON object")


# (what, glob under a local home, reader raising a UserError "<flag>: <path>...") of the files
# and folders runs write.
RUN_FILES: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("caption run", f"runs/**/{RUN_FILE}", lambda path: read_run_file(Path(path).parent)),
    ("training checkpoint", f"runs/**/{CHECKPOINT_NAME}", lambda path: checkpoint_dict(
        path, CHECKPOINT_KEYS, field="--run", fix="train the run again (--force)"
    )),
)  # fmt: skip
ARTIFACTS: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("artifact", "artifacts/*", read_artifact),
    ("retrieval artifact", "runs/**/artifact", load_retrieval_artifact),
)


def _file_findings(home: _Home) -> Iterator[tuple[str, str, str]]:
    """(kind, path, problem) of every damaged JSON file, run file and artifact."""
    checks: list[tuple[str, str, Callable[[str], Any]]] = [
        ("few-shot manifest", "fewshot/*/*.json", FewShotManifest.from_json)
    ]
    if not home.is_url:  # runs and artifacts are only ever written to a local home
        checks += [
            ("run result", "runs/**/result.json", _json_object),
            ("run metrics", "runs/**/metrics.json", _json_object),
        ]
    for kind, pattern, check in checks:
        for path in home.glob(pattern):
            problem = _json_problem(path, home.fs, check)
            if problem:
                yield kind, path, problem
    for kind, pattern, read in RUN_FILES:
        for path in [] if home.is_url else home.glob(pattern):
            try:
                read(path)
            except UserError as exc:
                yield kind, path, str(exc).removeprefix("--run: ").removeprefix(f"{path}: ")
    for kind, pattern, read in ARTIFACTS:
        for folder in home.folders(pattern):
            try:
                read(folder)
            except UserError as exc:
                yield kind, folder, str(exc).removeprefix("--artifact: ")


def _count(home: _Home) -> int:
    patterns = [p for _, p, _ in PARQUET_TABLES] + ["fewshot/*/*.json"]
    if not home.is_url:
        patterns += ["runs/**/result.json", "runs/**/metrics.json"]
        patterns += [p for _, p, _ in RUN_FILES]
    return sum(len(home.glob(p)) for p in patterns) + sum(
        len(home.folders(p)) for _, p, _ in ARTIFACTS
    )


def run_doctor(home: str | Path | None, *, quarantine: bool = False) -> DoctorReport:
    """Check the home; with `quarantine`, move each damaged file aside (salvaging good rows)."""
    h = _Home(home)
    if not h.fs.exists(h.root):
        raise UserError(f"--home: {h.shown_root} does not exist; pass the home to check")
    report = DoctorReport(home=h.shown_root, checked=_count(h))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = f"{h.root}/{QUARANTINE_DIR}/{stamp}"

    def folder() -> str:
        report.quarantine = h.shown(target)
        return target

    report.findings += _parquet_findings(h, folder if quarantine else None)
    for kind, path, problem in list(_file_findings(h)):
        finding = Finding(kind, h.shown(path), problem)
        if quarantine:
            finding.action = f"moved to {h.shown(h.move(path, folder()))}"
            finding.fixed = True
        report.findings.append(finding)
    return report


def explain_read_failure(exc: BaseException, home: str | Path | None) -> UserError | None:
    """The UserError naming the damaged part behind a failed read: `exc` is a decoding error from
    DuckDB or pyarrow (a part whose footer is sound but whose pages are not, which the cheap check
    on every read cannot see). Found by a deep check of the home's tables; None when no part is
    damaged or `exc` is no decoding error."""
    import duckdb

    decoding = isinstance(exc, duckdb.Error | pa.ArrowException) or (
        isinstance(exc, OSError) and exc.errno is None
    )
    if not decoding:
        return None
    try:
        h = _Home(home)
        for kind, pattern, table_schema in PARQUET_TABLES:
            for path in h.glob(pattern):
                report = deep_check(h.shown(path), table_schema, h.part_fs())
                if report.problem is not None:
                    return damaged_part_error(h.shown(path), report.problem, kind)
    except (OSError, ValueError, UserError):  # a home that cannot be listed: keep the first error
        return None
    return None
