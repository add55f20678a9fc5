"""Bank snapshots: an id that determines exactly the rows a read saw, readable for ever after.

A snapshot is of one domain and, optionally, one CLIP model id: the domain's usable descriptions
(status ok) and, with a model, the embeddings of their texts for that model.

- Its **id** is a digest of its content: the (row key, created_at) of every usable description
  and the (text hash, created_at) of every embedding read, with the domain and model. A bank
  that did not change has the same id, so runs keyed by it are reused; any new row gives a new id.
- It is **read back** through its origins: the writers' parts its rows came from (rows never
  change; compaction keeps each row's origin in the merged part's footer, `prompt_banks.parts`).
  `BankStore.at(snapshot)` reads those origins only, restricted to the domain and model, and
  applies the same newest-row-per-key rule, so it sees exactly the rows the snapshot saw, after
  any number of appends and compactions. `resolve` re-derives the id from that read and refuses
  a snapshot whose parts no longer give it.

Snapshots are recorded in the store's `snapshots/` table (one part per new snapshot, one row per
table it reads, compacted like the others): by `bank import`, `bank generate` and `bank embed`
after they write, and by every training read (`take`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from prompt_banks.atomic import publish_part
from prompt_banks.errors import UserError
from prompt_banks.parts import live_parts
from prompt_banks.schema import stable_hash
from prompt_banks.store import BankStore

if TYPE_CHECKING:
    import torch

SNAPSHOTS = pa.schema(
    [
        pa.field("snapshot_id", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("model_id", pa.string()),  # null: descriptions only
        pa.field("descriptions_hash", pa.string(), nullable=False),
        pa.field("registered_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("summary", pa.string(), nullable=False),  # JSON, see `Snapshot.summary`
        pa.field("table", pa.string(), nullable=False),  # descriptions | embeddings
        pa.field("origins", pa.string(), nullable=False),  # JSON list of the writers' part names
    ]
)

_USABLE = (
    "SELECT row_key, created_at, class_name, source, llm_model, llm_params, "
    "left(sha256(clean_text), 32) AS text_hash FROM descriptions "
    "WHERE domain = ? AND status = 'ok' AND clean_text IS NOT NULL"
)
_ID_LENGTH = 16
_MIN_PREFIX = 6


@dataclass(frozen=True)
class Snapshot:
    id: str
    domain: str
    model_id: str | None
    descriptions_hash: str
    origins: dict[str, tuple[str, ...]]  # table -> the writers' parts its rows came from
    # rows, classes, texts, embedded, llm: [{source, llm_model, llm_params, rows}]
    summary: dict[str, Any] = field(default_factory=dict)
    registered_at: datetime | None = None

    def lineage(self) -> dict[str, Any]:
        """What a run or an artifact records of the bank it trained on."""
        return {
            "snapshot": self.id,
            "domain": self.domain,
            "clip_model_id": self.model_id,
            "descriptions_hash": self.descriptions_hash,
            "rows": self.summary.get("rows"),
            "classes": self.summary.get("classes"),
            "embedded": self.summary.get("embedded"),
            "llm": self.summary.get("llm", []),
        }


def _digest(con: duckdb.DuckDBPyConnection, sql: str, key: str, params: list[Any]) -> str:
    row = con.execute(
        f"SELECT sha256(coalesce(string_agg({key} || '@' || epoch_us(created_at)::VARCHAR, ',' "
        f"ORDER BY {key}, created_at), '')) FROM ({sql})",
        params,
    ).fetchone()
    return str(row[0])[:32]


def _state(store: BankStore, domain: str, model_id: str | None) -> Snapshot:
    """The snapshot of what `store` (pinned or not) holds now for `domain` and `model_id`."""
    with store.connect() as con:
        found = con.execute("SELECT 1 FROM descriptions WHERE domain = ? LIMIT 1", [domain])
        if not found.fetchall():
            raise UserError(
                f"domain: '{domain}' has no prompts in the store {store.root}; "
                "import or generate it"
            )
        desc_hash = _digest(con, _USABLE, "row_key", [domain])
        origins = {
            "descriptions": tuple(
                r[0]
                for r in con.execute(
                    "SELECT DISTINCT origin FROM descriptions_origin WHERE domain = ? ORDER BY 1",
                    [domain],
                ).fetchall()
            )
        }
        rows, classes, texts = con.execute(
            f"SELECT count(*), count(DISTINCT class_name), count(DISTINCT text_hash) "
            f"FROM ({_USABLE})",
            [domain],
        ).fetchone()
        llm = con.execute(
            f"SELECT source, llm_model, llm_params, count(*) FROM ({_USABLE}) "
            f"GROUP BY ALL ORDER BY ALL",
            [domain],
        ).fetchall()
        summary: dict[str, Any] = {
            "rows": int(rows),
            "classes": int(classes),
            "texts": int(texts),
            "llm": [
                {"source": s, "llm_model": m, "llm_params": p, "rows": int(n)} for s, m, p, n in llm
            ],
        }
        emb_hash = ""
        if model_id is not None:
            texts_sql = f"SELECT DISTINCT text_hash FROM ({_USABLE})"
            emb_sql = (
                f"SELECT text_hash, created_at FROM embeddings WHERE model_id = ? "
                f"AND text_hash IN ({texts_sql})"
            )
            emb_hash = _digest(con, emb_sql, "text_hash", [model_id, domain])
            summary["embedded"] = int(
                con.execute(f"SELECT count(*) FROM ({emb_sql})", [model_id, domain]).fetchone()[0]
            )
            origins["embeddings"] = tuple(
                r[0]
                for r in con.execute(
                    f"SELECT DISTINCT origin FROM embeddings_origin WHERE model_id = ? "
                    f"AND text_hash IN ({texts_sql}) ORDER BY 1",
                    [model_id, domain],
                ).fetchall()
            )
    snapshot_id = stable_hash(["bank-snapshot", domain, model_id, desc_hash, emb_hash])
    return Snapshot(
        id=snapshot_id[:_ID_LENGTH],
        domain=domain,
        model_id=model_id,
        descriptions_hash=desc_hash,
        origins=origins,
        summary=summary,
    )


def current(store: BankStore, domain: str, model_id: str | None = None) -> Snapshot:
    """The snapshot of the store as it is now (not recorded)."""
    return _state(store, domain, model_id)


def _snapshot_rows(store: BankStore, where: str, params: list[Any]) -> list[dict[str, Any]]:
    parts, _ = live_parts(store.snapshots_dir)
    if not parts:
        return []
    listed = ", ".join("'" + p.url.replace("'", "''") + "'" for p in parts)
    con = duckdb.connect()
    try:
        if store.filesystem is not None:
            con.register_filesystem(store.filesystem)
        cursor = con.execute(
            f"SELECT DISTINCT * FROM read_parquet([{listed}]) WHERE {where} "
            f'ORDER BY registered_at, snapshot_id, "table"',
            params,
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()


def _grouped(rows: list[dict[str, Any]]) -> list[Snapshot]:
    """Snapshots from their table rows, in the order they were first recorded."""
    by_id: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = by_id.setdefault(r["snapshot_id"], {"row": r, "origins": {}})
        entry["origins"].setdefault(r["table"], set()).update(json.loads(r["origins"]))
    return [
        Snapshot(
            id=sid,
            domain=e["row"]["domain"],
            model_id=e["row"]["model_id"],
            descriptions_hash=e["row"]["descriptions_hash"],
            origins={t: tuple(sorted(o)) for t, o in e["origins"].items()},
            summary=json.loads(e["row"]["summary"]),
            registered_at=e["row"]["registered_at"],
        )
        for sid, e in by_id.items()
    ]


def register(store: BankStore, snapshot: Snapshot) -> Snapshot:
    """Record `snapshot` unless it is recorded already (ids are content: the first one stays)."""
    found = _grouped(_snapshot_rows(store, "snapshot_id = ?", [snapshot.id]))
    if found:
        return found[0]
    now = datetime.now(UTC)
    rows = [
        {
            "snapshot_id": snapshot.id,
            "domain": snapshot.domain,
            "model_id": snapshot.model_id,
            "descriptions_hash": snapshot.descriptions_hash,
            "registered_at": now,
            "summary": json.dumps(snapshot.summary, sort_keys=True),
            "table": table,
            "origins": json.dumps(sorted(origins)),
        }
        for table, origins in sorted(snapshot.origins.items())
    ]
    publish_part(pa.Table.from_pylist(rows, schema=SNAPSHOTS), store.snapshots_dir, what="store")
    return Snapshot(**{**snapshot.__dict__, "registered_at": now})


def take(store: BankStore, domain: str, model_id: str | None = None) -> Snapshot:
    """The current snapshot, recorded."""
    return register(store, current(store, domain, model_id))


def load(store: BankStore, snapshot_id: str) -> Snapshot:
    """A recorded snapshot by id (or by a unique prefix of at least 6 characters)."""
    sid = snapshot_id.strip().lower()
    if len(sid) < _MIN_PREFIX:
        raise UserError(
            f"--bank-snapshot: '{snapshot_id}' is too short; give at least {_MIN_PREFIX} "
            f"characters of an id from `aape bank history`"
        )
    found = _grouped(_snapshot_rows(store, "starts_with(snapshot_id, ?)", [sid]))
    if not found:
        raise UserError(
            f"--bank-snapshot: no snapshot '{snapshot_id}' in {store.root}; "
            f"see `aape bank history --domain DOMAIN`"
        )
    if len({s.id for s in found}) > 1:
        raise UserError(
            f"--bank-snapshot: '{snapshot_id}' matches {len(found)} snapshots; give more characters"
        )
    return found[0]


def for_domain(store: BankStore, domain: str) -> list[Snapshot]:
    """Every recorded snapshot of `domain`, oldest first."""
    return _grouped(_snapshot_rows(store, "domain = ?", [domain]))


def resolve(store: BankStore, snapshot_id: str, domain: str, model_id: str) -> Snapshot:
    """The (domain, model) snapshot to train on from a recorded id, checked to read back exactly.

    A descriptions-only snapshot pins the descriptions and takes the model's embeddings of
    their texts as stored now; the result is recorded as a snapshot of its own."""
    snap = load(store, snapshot_id)
    if snap.domain != domain:
        raise UserError(
            f"--bank-snapshot: {snap.id} is of domain '{snap.domain}', not --bank-domain '{domain}'"
        )
    if snap.model_id not in (None, model_id):
        raise UserError(
            f"--bank-snapshot: {snap.id} holds embeddings of '{snap.model_id}', not of "
            f"'{model_id}'; pick a snapshot of that model or its descriptions-only one"
        )
    if snap.model_id is None:
        every = {o for p in live_parts(store.embeddings_dir)[0] for o, _ in p.origins}
        interim = Snapshot(
            id=snap.id,
            domain=domain,
            model_id=model_id,
            descriptions_hash=snap.descriptions_hash,
            origins={**snap.origins, "embeddings": tuple(sorted(every))},
        )
        return register(store, _state(store.at(interim), domain, model_id))
    again = _state(store.at(snap), domain, model_id)
    if again.id != snap.id:
        raise UserError(
            f"--bank-snapshot: {snap.id} no longer reads back exactly from {store.root} "
            f"(its parts give {again.id}); run `aape doctor`, or pick another snapshot"
        )
    return snap


def _usable_rows(store: BankStore, snap: Snapshot) -> dict[str, tuple[Any, ...]]:
    with store.at(snap).connect() as con:
        rows = con.execute(
            f"SELECT row_key, class_name, source, llm_model, llm_params FROM ({_USABLE})",
            [snap.domain],
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def _by_llm(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    counts = Counter((s, m, p) for _, s, m, p in rows)
    return [
        {"source": s, "llm_model": m, "llm_params": p, "rows": n}
        for (s, m, p), n in sorted(counts.items(), key=lambda kv: tuple(str(x) for x in kv[0]))
    ]


def diff(store: BankStore, domain: str, a: str, b: str) -> dict[str, Any]:
    """Classes added and removed and rows added and removed from snapshot `a` to snapshot `b`."""
    snaps = [load(store, s) for s in (a, b)]
    for s in snaps:
        if s.domain != domain:
            raise UserError(f"snapshot: {s.id} is of domain '{s.domain}', not '{domain}'")
    old, new = (_usable_rows(store, s) for s in snaps)
    old_classes = {v[0] for v in old.values()}
    new_classes = {v[0] for v in new.values()}
    added = [new[k] for k in sorted(set(new) - set(old))]
    removed = [old[k] for k in sorted(set(old) - set(new))]
    return {
        "domain": domain,
        "a": snaps[0].id,
        "b": snaps[1].id,
        "classes_added": sorted(new_classes - old_classes),
        "classes_removed": sorted(old_classes - new_classes),
        "rows_added": len(added),
        "rows_removed": len(removed),
        "rows_added_by": _by_llm(added),
        "classes_with_rows_added": len({r[0] for r in added}),
    }


def history(store: BankStore, domain: str) -> list[dict[str, Any]]:
    """One entry per state of the domain's descriptions, oldest first: when it was first
    recorded, its rows and classes, what changed since the previous state (rows per LLM and
    params), and its snapshot ids (descriptions only, and one per CLIP model)."""
    entries: dict[str, dict[str, Any]] = {}
    for snap in for_domain(store, domain):
        entry = entries.setdefault(
            snap.descriptions_hash,
            {
                "first_recorded": snap.registered_at,
                "rows": snap.summary["rows"],
                "classes": snap.summary["classes"],
                "llm": snap.summary["llm"],
                "snapshots": {},
            },
        )
        entry["snapshots"][snap.model_id or "descriptions"] = snap.id
    out: list[dict[str, Any]] = []
    before: dict[tuple[Any, ...], int] = {}
    prev_rows = prev_classes = 0
    for entry in entries.values():
        counts = {(g["source"], g["llm_model"], g["llm_params"]): g["rows"] for g in entry["llm"]}
        added = [
            {"source": k[0], "llm_model": k[1], "llm_params": k[2], "rows": n - before.get(k, 0)}
            for k, n in counts.items()
            if n != before.get(k, 0)
        ]
        out.append(
            {
                "first_recorded": entry["first_recorded"].isoformat(),
                "rows": entry["rows"],
                "rows_added": entry["rows"] - prev_rows,
                "classes": entry["classes"],
                "classes_added": entry["classes"] - prev_classes,
                "added_by": added,
                "snapshots": entry["snapshots"],
            }
        )
        before, prev_rows, prev_classes = counts, entry["rows"], entry["classes"]
    return out


def pinned_bank(
    store: BankStore,
    domain: str,
    classes: Sequence[str],
    model_id: str,
    snapshot_id: str | None = None,
    check: Callable[[torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, Snapshot]:
    """`queries.bank_tensor` read from one snapshot: `snapshot_id`'s (see `resolve`), or the
    store's current one, recorded once the bank passed `check` (a refused bank leaves the store
    as it was). Returns (emb, mask, snapshot)."""
    from prompt_banks.queries import bank_tensor  # torch: only where a bank is trained on

    if snapshot_id is None:
        snap = current(store, domain, model_id)
    else:
        snap = resolve(store, snapshot_id, domain, model_id)
    emb, mask = bank_tensor(store.at(snap), domain, classes, model_id)
    if check is not None:
        check(emb)
    return emb, mask, (register(store, snap) if snapshot_id is None else snap)
