"""DuckDB queries over the store: domains and classes, the bank tensor training consumes, the
descriptions nearest to an embedding, and stats.

Every value from a user goes in as a bound parameter. The only number formatted into SQL is the
embedding size in `FLOAT[d]` (an int read from the store), because a cast type cannot be bound.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from prompt_banks.errors import UserError
from prompt_banks.integrity import FIX
from prompt_banks.store import BankStore
from prompt_banks.text import canonical_class_name

# `schema.text_hash` in SQL: sha256 of the UTF-8 text, first 32 hex digits.
_TEXT_HASH = "left(sha256(clean_text), 32)"
# The order of a class's prompts: stable across runs and writers.
_PROMPT_ORDER = "source, question NULLS FIRST, sample_index, row_key"


def list_domains(store: BankStore) -> dict[str, int]:
    """Domain -> number of usable (status ok) descriptions."""
    with store.connect() as con:
        rows = con.execute(
            "SELECT domain, count(*) FILTER (WHERE status = 'ok') FROM descriptions "
            "GROUP BY domain ORDER BY domain"
        ).fetchall()
    return {d: int(n) for d, n in rows}


def _require_domain(store: BankStore, domain: str) -> None:
    domains = list_domains(store)
    if domain not in domains:
        known = ", ".join(sorted(domains)) or "none yet"
        raise UserError(
            f"domain: '{domain}' is not in the store {store.root} (domains: {known}); "
            f"import or generate it first"
        )


def list_classes(store: BankStore, domain: str) -> dict[str, int]:
    """Canonical class name -> number of distinct usable descriptions, for one domain."""
    _require_domain(store, domain)
    with store.connect() as con:
        rows = con.execute(
            "SELECT class_name, count(DISTINCT clean_text) FILTER (WHERE status = 'ok') "
            "FROM descriptions WHERE domain = ? GROUP BY class_name ORDER BY class_name",
            [domain],
        ).fetchall()
    return {c: int(n) for c, n in rows}


def class_texts(
    store: BankStore, domain: str, classes: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """Class -> its distinct usable description texts in prompt order (empty dict: no domain)."""
    params: list[Any] = [domain]
    where = ""
    if classes is not None:
        where = " AND list_contains(?::VARCHAR[], class_name)"
        params.append([canonical_class_name(c) for c in classes])
    with store.connect() as con:
        rows = con.execute(
            f"SELECT class_name, clean_text FROM ("
            f"  SELECT class_name, clean_text, row_number() OVER (PARTITION BY class_name, "
            f"  clean_text ORDER BY {_PROMPT_ORDER}) AS copy, "
            f"  row_number() OVER (PARTITION BY class_name ORDER BY {_PROMPT_ORDER}) AS pos "
            f"  FROM descriptions WHERE domain = ? AND status = 'ok' AND clean_text IS NOT NULL"
            f"{where}) WHERE copy = 1 ORDER BY class_name, pos",
            params,
        ).fetchall()
    out: dict[str, list[str]] = defaultdict(list)
    for c, text in rows:
        out[c].append(text)
    return dict(out)


def _stored_dim(store: BankStore, model_id: str) -> int:
    dim = store.model_dim(model_id)
    if dim is None:
        raise UserError(
            f"clip model: the store {store.root} has no embeddings for '{model_id}'; "
            f"run `aape bank embed` with that model first"
        )
    return dim


def shared_bank_names(classes: Sequence[str]) -> dict[str, list[int]]:
    """Bank class names that several of `classes` bear (canonical name -> their positions).

    The bank is keyed by canonical name, so those classes get the same prompts: ImageNet's two
    "missile" and two "sunglasses" classes in CLIP's names (CuPL's file has 998 keys for 1000
    classes), or "Cardigan" (the corgi) and "cardigan" (the sweater) in WordNet's."""
    positions: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(classes):
        positions[canonical_class_name(c)].append(i)
    return {n: ps for n, ps in positions.items() if len(ps) > 1}


def bank_tensor(
    store: BankStore, domain: str, classes: Sequence[str], model_id: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt bank of `classes` (in that order) for one CLIP model, as training consumes it:
    `emb` [C, n_max, d] float32 (zero where padded) and `mask` [C, n_max] bool.

    Classes are positions, so a name may come twice: each class that bears a bank name gets that
    name's prompts (see `shared_bank_names`). Raises a UserError naming the classes without
    prompts, or when some prompts of the classes are not embedded for `model_id` yet."""
    names = [canonical_class_name(c) for c in classes]
    if not names:
        raise UserError("classes: empty list; pass at least one class")
    dim = _stored_dim(store, model_id)
    with store.connect() as con:
        table = con.sql(
            f"WITH d AS ("
            f"  SELECT class_name, {_TEXT_HASH} AS text_hash, "
            f"  row_number() OVER (PARTITION BY class_name ORDER BY {_PROMPT_ORDER}) AS pos "
            f"  FROM descriptions WHERE domain = ? AND status = 'ok' AND clean_text IS NOT NULL "
            f"  AND list_contains(?::VARCHAR[], class_name)), "
            f"u AS (SELECT class_name, text_hash, min(pos) AS pos FROM d GROUP BY ALL) "
            f"SELECT u.class_name, e.embedding FROM u LEFT JOIN "
            f"(SELECT text_hash, embedding FROM embeddings WHERE model_id = ?) e USING (text_hash) "
            f"ORDER BY u.class_name, u.pos",
            params=[domain, sorted(set(names)), model_id],
        ).to_arrow_table()
    found = table.column("class_name").to_pylist()
    without = list(dict.fromkeys(n for n in names if n not in set(found)))
    if without:
        shown = ", ".join(repr(n) for n in without[:10]) + (" ..." if len(without) > 10 else "")
        raise UserError(
            f"bank: {len(without)} classes have no prompts in domain '{domain}': {shown}; "
            f"import or generate descriptions for them"
        )
    embedding = table.column("embedding")
    if embedding.null_count:
        missing = {c for c, e in zip(found, embedding.is_null().to_pylist(), strict=True) if e}
        raise UserError(
            f"bank: {embedding.null_count} prompts of {len(missing)} classes in domain "
            f"'{domain}' have no embedding for '{model_id}' (e.g. {sorted(missing)[0]!r}); "
            f"run `aape bank embed --domain {domain}` with that model"
        )
    vectors_of = embedding.combine_chunks() if isinstance(embedding, pa.ChunkedArray) else embedding
    if pc.any(pc.not_equal(pc.list_value_length(vectors_of), dim)).as_py():
        raise UserError(
            f"store {store.root}: embeddings of '{model_id}' hold vectors whose length is not "
            f"their dim {dim}; {FIX}"
        )
    flat = pc.list_flatten(vectors_of)
    vectors = np.array(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
    counts = Counter(found)
    n_max = max(counts.values())
    emb = torch.zeros(len(names), n_max, dim, dtype=torch.float32)
    mask = torch.zeros(len(names), n_max, dtype=torch.bool)
    start = 0
    by_class: dict[str, tuple[int, int]] = {}
    for c in dict.fromkeys(found):  # rows arrive grouped by class
        by_class[c] = (start, counts[c])
        start += counts[c]
    for i, n in enumerate(names):
        s, k = by_class[n]
        emb[i, :k] = torch.from_numpy(vectors[s : s + k])
        mask[i, :k] = True
    return emb, mask


def nearest(
    store: BankStore,
    domain: str,
    class_name: str,
    query: np.ndarray | torch.Tensor,
    model_id: str,
    k: int = 5,
) -> list[dict[str, Any]]:
    """The `k` descriptions of a class closest to a text or image embedding (cosine, highest
    first): [{"text", "score"}]."""
    if k < 1:
        raise UserError(f"top-k: {k} must be at least 1")
    canon = canonical_class_name(class_name)
    classes = list_classes(store, domain)
    if canon not in classes:
        raise UserError(
            f"class: '{class_name}' is not in domain '{domain}' ({len(classes)} classes); "
            f"see `aape bank stats --domain {domain}`"
        )
    dim = _stored_dim(store, model_id)
    vector = np.asarray(
        query.detach().cpu() if isinstance(query, torch.Tensor) else query, dtype=np.float32
    ).reshape(-1)
    if vector.shape[0] != dim:
        raise UserError(
            f"query: embedding has {vector.shape[0]} floats, the store's {model_id} has {dim}"
        )
    with store.connect() as con:
        rows = con.execute(
            f"WITH d AS (SELECT DISTINCT clean_text, {_TEXT_HASH} AS text_hash FROM descriptions "
            f"  WHERE domain = ? AND class_name = ? AND status = 'ok' AND clean_text IS NOT NULL) "
            f"SELECT d.clean_text, array_cosine_similarity("
            f"  e.embedding::FLOAT[{int(dim)}], ?::FLOAT[{int(dim)}]) AS score "
            f"FROM d JOIN embeddings e ON e.text_hash = d.text_hash AND e.model_id = ? "
            f"ORDER BY score DESC, d.clean_text LIMIT ?",
            [domain, canon, vector.tolist(), model_id, k],
        ).fetchall()
    if not rows:
        raise UserError(
            f"class: '{canon}' has no embedded descriptions for '{model_id}'; run `aape bank embed`"
        )
    return [{"text": t, "score": float(s)} for t, s in rows]


def drop_reason(error: str | None) -> str:
    """The reason of a dropped row, without its details: "duplicate of sample 3" -> "duplicate"."""
    return (error or "unspecified").split(" ", 1)[0]


def stats(store: BankStore, domain: str) -> dict[str, Any]:
    """JSON-able summary of a domain: rows by status and source, per-class counts, duplicates,
    failed rows grouped by error, and per CLIP model how much is embedded and truncated."""
    _require_domain(store, domain)
    with store.connect() as con:
        by_class = con.execute(
            "SELECT class_name, status, count(*) FROM descriptions WHERE domain = ? "
            "GROUP BY ALL ORDER BY ALL",
            [domain],
        ).fetchall()
        sources = con.execute(
            "SELECT source, count(*) FROM descriptions WHERE domain = ? GROUP BY ALL ORDER BY ALL",
            [domain],
        ).fetchall()
        reasons = con.execute(
            "SELECT status, error, count(*) FROM descriptions WHERE domain = ? "
            "AND status IN ('dropped', 'failed') GROUP BY ALL ORDER BY 3 DESC, 2",
            [domain],
        ).fetchall()
        repeated = con.execute(
            "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM descriptions "
            "WHERE domain = ? AND status = 'ok' GROUP BY class_name, clean_text)",
            [domain],
        ).fetchone()[0]
        models = con.execute(
            f"WITH t AS (SELECT DISTINCT {_TEXT_HASH} AS text_hash FROM descriptions "
            f"  WHERE domain = ? AND status = 'ok' AND clean_text IS NOT NULL) "
            f"SELECT e.model_id, any_value(e.dim), count(*), count(*) FILTER (WHERE e.truncated), "
            f"max(e.n_tokens) FROM t JOIN embeddings e USING (text_hash) GROUP BY 1 ORDER BY 1",
            [domain],
        ).fetchall()
        n_texts = con.execute(
            f"SELECT count(DISTINCT {_TEXT_HASH}) FROM descriptions "
            f"WHERE domain = ? AND status = 'ok' AND clean_text IS NOT NULL",
            [domain],
        ).fetchone()[0]
    per_class: dict[str, dict[str, int]] = defaultdict(lambda: {"ok": 0, "dropped": 0, "failed": 0})
    status: Counter[str] = Counter()
    for c, st, n in by_class:
        per_class[c][st] = int(n)
        status[st] += int(n)
    ok_counts = [v["ok"] for v in per_class.values()]
    dropped_by_reason: Counter[str] = Counter()
    failed_by_error: dict[str, int] = {}
    for st, error, n in reasons:
        if st == "dropped":
            dropped_by_reason[drop_reason(error)] += int(n)
        else:
            failed_by_error[error or "unspecified"] = int(n)
    return {
        "domain": domain,
        "rows": sum(status.values()),
        "status": {s: status.get(s, 0) for s in ("ok", "dropped", "failed")},
        "sources": {s: int(n) for s, n in sources},
        "classes": len(per_class),
        "texts": int(n_texts),
        "per_class_ok": {
            "min": min(ok_counts),
            "median": statistics.median(ok_counts),
            "max": max(ok_counts),
            "classes_without_ok": sorted(c for c, v in per_class.items() if not v["ok"]),
        },
        "duplicates": {
            "dropped": dropped_by_reason.get("duplicate", 0),
            "ok_repeated": int(repeated),
        },
        "dropped_by_reason": dict(dropped_by_reason),
        "failed_by_error": failed_by_error,
        "embeddings": {
            m: {
                "dim": int(d),
                "embedded": int(n),
                "missing": int(n_texts) - int(n),
                "truncated": int(t),
                "truncated_share": round(int(t) / int(n), 6) if n else 0.0,
                "max_tokens": int(mx),
            }
            for m, d, n, t, mx in models
        },
        "per_class": dict(per_class),
    }


def hygiene(
    store: BankStore, domain: str, model_id: str | None = None
) -> dict[str, dict[str, Any]]:
    """Per class of a domain: rows by status, the drop reasons, and (for `model_id`, the CLIP
    whose tokenizer counted them) the texts' mean and max length in tokens and the share that
    CLIP's context truncated."""
    _require_domain(store, domain)
    with store.connect() as con:
        status = con.execute(
            "SELECT class_name, status, error, count(*) FROM descriptions WHERE domain = ? "
            "GROUP BY ALL ORDER BY ALL",
            [domain],
        ).fetchall()
        tokens = con.execute(
            f"WITH t AS (SELECT DISTINCT class_name, {_TEXT_HASH} AS text_hash "
            f"  FROM descriptions WHERE domain = ? AND status = 'ok' AND clean_text IS NOT NULL) "
            f"SELECT t.class_name, avg(e.n_tokens), max(e.n_tokens), avg(e.truncated::INT) "
            f"FROM t JOIN embeddings e USING (text_hash) WHERE e.model_id = ? GROUP BY 1",
            [domain, model_id],
        ).fetchall()
    out: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"ok": 0, "dropped": 0, "failed": 0, "drop_reasons": Counter()}
    )
    for c, st, error, n in status:
        out[c][st] += int(n)
        if st == "dropped":
            out[c]["drop_reasons"][drop_reason(error)] += int(n)
    for c, mean, mx, truncated in tokens:
        out[c].update(tokens_mean=float(mean), tokens_max=int(mx), truncated_share=float(truncated))
    return {c: {**v, "drop_reasons": dict(v["drop_reasons"])} for c, v in sorted(out.items())}
