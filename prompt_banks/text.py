"""Small text primitives shared by importers and LLM-answer cleaning."""

from __future__ import annotations

import re
import unicodedata

_WS = re.compile(r"\s+")
# A sentence end fused to the next sentence with no space: "in terms of lightA background".
_FUSED = re.compile(r"(?<=[a-z0-9\)])(?=[A-Z][a-z])|(?<=[.!?])(?=[A-Z])")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def normalize_whitespace(text: str) -> str:
    """Unicode NFC, every run of whitespace a single space, trimmed."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def canonical_class_name(name: str) -> str:
    """The canonical spelling of a class name: lower case, underscores and runs of whitespace
    as single spaces, trimmed. "Sphynx", " sphynx " and "SPHYNX" are one class."""
    return normalize_whitespace(name.replace("_", " ")).lower()


def split_fused(text: str) -> list[str]:
    """Split sentences that were concatenated without a separator ("...of lightA background
    is ...") and ordinary sentence boundaries; each piece is whitespace-normalised."""
    pieces: list[str] = []
    for part in _SENTENCE_END.split(normalize_whitespace(text)):
        pieces.extend(p.strip() for p in _FUSED.split(part) if p.strip())
    return pieces


def first_sentence(text: str) -> str:
    """Text up to and including its first sentence end (the LLM stop the server did not apply)."""
    text = normalize_whitespace(text)
    m = re.search(r"[.!?](\s|$)", text)
    return text[: m.start() + 1] if m else text
