"""Cleaning LLM answers: the raw text is kept, a clean one is derived, or a reason to drop it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from prompt_banks.text import first_sentence, normalize_whitespace

# Openers of an answer that declines instead of describing.
_REFUSAL = re.compile(
    r"^(i'?m sorry|i am sorry|sorry|i apologi[sz]e|i can ?not|i can'?t|i'?m (not able|unable)|"
    r"i am (not able|unable)|as an ai|i do(n'?t| not) (know|have)|unfortunately)\b",
    re.IGNORECASE,
)
# Chat boilerplate in front of the description proper ("Sure! ", "Answer: ", "- ", "1. ").
_LEAD = re.compile(
    r"^((sure|certainly|of course|okay|ok)[,!.]\s*|(answer|description|caption)\s*:\s*"
    r"|[-*•]\s+|\d+[.)]\s+)+",
    re.IGNORECASE,
)
# "Here is a step-by-step process: 1." -- the opening of a list that the stop cut off.
_PREAMBLE = re.compile(r":\s*(\d+[.)]?)?\s*[.!?]?$")
_QUOTES = "\"'“”‘’`"
_NON_WORD = re.compile(r"[^\w\s]")


@dataclass(frozen=True)
class Cleaned:
    text: str | None  # the clean description, None when dropped
    # Why it was dropped, None when kept; the first word is the reason's code (stats group by it).
    reason: str | None


def comparable(text: str) -> str:
    """The form two texts are compared in: lower case, no punctuation, single spaces."""
    return normalize_whitespace(_NON_WORD.sub(" ", text.lower()))


def clean_answer(raw: str | None, *, question: str, min_words: int = 3) -> Cleaned:
    """Trim, cut at the first sentence end (where the server's stop did not), end with a full
    stop (as CuPL did after its stop at "."), and drop empty, too-short, refusing or echoing
    answers. Duplicates are a per-class matter: see `Deduplicator`."""
    text = normalize_whitespace(raw or "")
    text = _LEAD.sub("", text).strip(_QUOTES + " ")
    text = first_sentence(text).strip(_QUOTES + " ")
    if not text or not any(ch.isalnum() for ch in text):
        return Cleaned(None, "empty answer")
    if _REFUSAL.match(text):
        return Cleaned(None, "refusal")
    if _PREAMBLE.search(text):
        return Cleaned(None, "preamble without a description")
    words = comparable(text).split()
    q = comparable(question)
    if " ".join(words) == q or (
        q and " ".join(words).startswith(q) and len(words) <= len(q.split()) + 2
    ):
        return Cleaned(None, "echo of the question")
    if len(words) < min_words:
        return Cleaned(None, f"too-short ({len(words)} words < {min_words})")
    if text[-1] not in ".!?":
        text += "."
    return Cleaned(text[0].upper() + text[1:], None)


class Deduplicator:
    """Remembers the clean texts of one class; the first of equal texts is kept."""

    def __init__(self, existing: list[str] | tuple[str, ...] = ()) -> None:
        self._seen = {comparable(t) for t in existing}

    def is_duplicate(self, text: str) -> bool:
        key = comparable(text)
        if key in self._seen:
            return True
        self._seen.add(key)
        return False
