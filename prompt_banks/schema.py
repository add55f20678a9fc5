"""The two tables of a prompt bank, declared once. Every write is validated against these."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa

DESCRIPTION_STATUSES = ("ok", "dropped", "failed")
DESCRIPTION_SOURCES = ("llm", "import", "template")

DESCRIPTIONS = pa.schema(
    [
        pa.field("row_key", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),  # canonical
        pa.field("raw_class_name", pa.string(), nullable=False),  # as the source spelled it
        pa.field("source", pa.string(), nullable=False),  # llm | import | template
        pa.field("question", pa.string()),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("llm_model", pa.string()),
        pa.field("llm_params", pa.string()),  # JSON: temperature, max_tokens, stop, seed, ...
        pa.field("raw_text", pa.string()),
        pa.field("clean_text", pa.string()),
        pa.field("status", pa.string(), nullable=False),  # ok | dropped | failed
        pa.field("error", pa.string()),  # why it failed or was dropped
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

EMBEDDINGS = pa.schema(
    [
        pa.field("text_hash", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("dim", pa.int32(), nullable=False),
        # Parquet keeps a variable-length list; queries cast it to FLOAT[dim].
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),  # L2-normalised
        pa.field("n_tokens", pa.int32(), nullable=False),  # incl. start/end tokens
        pa.field("truncated", pa.bool_(), nullable=False),  # longer than CLIP's context
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def stable_hash(value: Any) -> str:
    """A 128-bit hex digest of a JSON-able value; the same value always gives the same key."""
    payload = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_hash(text: str) -> str:
    """Key of one text in the embeddings table (a text is embedded once per CLIP model)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def description_row_key(
    *,
    domain: str,
    class_name: str,
    source: str,
    question: str | None,
    sample_index: int,
    llm_model: str | None,
    llm_params: str | None,
    raw_text: str | None = None,
    piece: int = 0,
) -> str:
    """Hash of everything that determines a description row.

    For LLM rows the text is the *result*, so it is not part of the key: the same (class,
    question, sample, model, params) is asked once. For imported rows the text is the content, so
    it is. `piece` numbers the sentences that one fused raw text was split into; it joins the
    key only when non-zero, so keys of unsplit rows never change.
    """
    key: dict[str, Any] = {
        "domain": domain,
        "class_name": class_name,
        "source": source,
        "question": question,
        "sample_index": sample_index,
        "llm_model": llm_model,
        "llm_params": llm_params,
        "raw_text": raw_text if source != "llm" else None,
    }
    if piece:
        key["piece"] = piece
    return stable_hash(key)
