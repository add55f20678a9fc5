"""Small text primitives shared by importers and LLM-answer cleaning.

The debris these handle is real (see ../shared/prompt_banks/README.md): leading spaces, two
answers fused with no separator (" in terms of lightA background is ..."), case and underscore
variants of class names. Brand names are the trap: "McLaren", "TrailBlazer", "4Runner",
"iPod" and "ActiveHybrid" look like fused boundaries to a naive lower->Upper rule.
"""

from __future__ import annotations

import itertools
import re
import unicodedata

_WS = re.compile(r"\s+")
# Candidate fused boundary: an upper-case letter glued to the previous character.
_GLUED_UPPER = re.compile(r"(?<=[^\s])(?=[A-Z])")
_LETTERS_AT_END = re.compile(r"[A-Za-z]+$")
_WORD_AT_START = re.compile(r"[A-Z][a-z]*")
# Words that open a new sentence in these banks. After a capitalised word, a digit or a closing
# bracket/quote, only one of these marks a fused boundary ("SedanThe", "2012This", "(DC2)The");
# anything else there is a name ("TrailBlazer", "4Runner"). "In"/"It" are left out: "LinkedIn".
_SENTENCE_STARTERS = frozenset(
    [
        "The",
        "This",
        "These",
        "That",
        "Those",
        "There",
        "They",
        "Their",
        "An",
        "Its",
        "Image",
        "From",
        "What",
        "Here",
    ]
)
# Tokens that end in "." without ending a sentence.
_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "st",
        "mt",
        "ft",
        "vs",
        "jr",
        "sr",
        "inc",
        "ltd",
        "co",
        "no",
        "approx",
        "e.g",
        "i.e",
        "u.s",
        "u.k",
        "a.m",
        "p.m",
    ]
)
# Shortest all-lower-case word that may end a fused sentence ("lightA", "modelThe"); shorter
# ones are brand prefixes: "iPod", "eBay", "xDrive".
_MIN_LOWER_TAIL = 3
# A piece cut off a fused answer with fewer words than this is a fragment, not a description.
_MIN_SENTENCE_WORDS = 3


def normalize_whitespace(text: str) -> str:
    """Unicode NFC, every run of whitespace a single space, trimmed."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def canonical_class_name(name: str) -> str:
    """The canonical spelling of a class name: lower case, underscores and runs of whitespace
    as single spaces, trimmed. "Sphynx", " sphynx " and "SPHYNX" are one class."""
    return normalize_whitespace(name.replace("_", " ")).lower()


def _is_abbreviation(token: str) -> bool:
    """Whether `token` (the text before a ".") is an abbreviation or an initial, not a word
    that ends a sentence: "Mr", "U.S", "J"."""
    core = token.lstrip("(\"'").lower()
    return core in _ABBREVIATIONS or (len(core) == 1 and core.isalpha()) or "." in core


def _is_fused_boundary(text: str, i: int) -> bool:
    """Whether the upper-case letter at `i`, glued to the character before it, starts a new
    sentence."""
    before = text[:i]
    prev = before[-1]
    token = before.rsplit(" ", 1)[-1]
    word = _WORD_AT_START.match(text, i)
    nxt = word.group(0) if word else text[i]
    after = text[i + len(nxt) : i + len(nxt) + 1]
    if prev in ".!?":
        # "areaThe" is handled below; here "2012?The", "phases?What", never "U.S.Army".
        return len(nxt) >= 2 and not _is_abbreviation(token[:-1])
    if prev.islower():
        tail = _LETTERS_AT_END.search(token)
        tail_word = tail.group(0) if tail else ""
        if tail_word.islower() and len(tail_word) >= _MIN_LOWER_TAIL:
            # "modelThe", "familyPincushion", "lightA background"; not "macOS".
            return len(nxt) >= 2 or after in (" ", "")
    closing = prev in ")]" or (prev in "\"'" and len(token) > 1)  # not an opening quote
    if prev.isalnum() or closing:
        # "SedanThe", "2012This", "(DC2)The"; never "TrailBlazer", "McLaren", "4Runner".
        return nxt in _SENTENCE_STARTERS and not after.isalpha()
    return False


def split_fused(text: str) -> list[str]:
    """Split sentences that were concatenated with no separator ("...of lightA background is
    ...", " modelThe exterior ..."); each piece is whitespace-normalised, empty pieces dropped.

    Ordinary boundaries ("It is big. It has ...") are kept: a multi-sentence answer is one
    description, as CuPL used it. Names such as "McLaren", "TrailBlazer" or "iPod" are not split.
    """
    text = normalize_whitespace(text)
    cuts = [m.start() for m in _GLUED_UPPER.finditer(text) if _is_fused_boundary(text, m.start())]
    bounds = [0, *cuts, len(text)]
    pieces = (text[a:b].strip() for a, b in itertools.pairwise(bounds))
    return [p for p in pieces if p]


def is_fragment(piece: str) -> bool:
    """Whether a piece cut off by `split_fused` is the tail of an unfinished answer ("model",
    ", from a fern", "/dig") rather than a sentence of its own."""
    return len(piece.split()) < _MIN_SENTENCE_WORDS or not (
        piece[0].isupper() or piece[0].isdigit()
    )


def first_sentence(text: str) -> str:
    """Text up to and including its first sentence end (the LLM stop the server did not apply).

    A fused boundary ends the sentence too; abbreviations ("Mr.", "U.S.", initials) and decimals
    ("3.5") do not.
    """
    pieces = split_fused(text)
    if not pieces:
        return ""
    head = pieces[0]
    for m in re.finditer(r"[.!?](?=\s|$)", head):
        token = head[: m.start()].rsplit(" ", 1)[-1]
        if m.group(0) != "." or not _is_abbreviation(token):
            return head[: m.end()]
    return head
