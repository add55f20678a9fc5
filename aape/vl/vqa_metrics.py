"""VQAv2's official accuracy, written from the rules of the VQA evaluation script.

For a question with 10 human answers, the score of a predicted answer is the mean over the 10
leave-one-out subsets (9 answers each) of min(1, matches / 3). The official script's details,
kept on purpose because they move numbers:
- newlines and tabs become spaces and both ends are stripped (always);
- punctuation, number words, articles and contractions are normalised only when the humans did
  not all give the same answer (the script's `len(set(gtAnswers)) > 1` shortcut);
- punctuation: `;/[]"{}()=+\\_->< @`,?!` is deleted when it touches a space (or the text holds a
  digit-comma-digit), else replaced by a space; a period not followed by a digit is deleted;
- the comparison of the normalised strings ignores case.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<")
PUNCTUATION += ("@", "`", ",", "?", "!")
# The contracted forms the official table restores; its keys are each form with exactly one
# apostrophe dropped (so "couldn't've" is reached from "couldnt've" and "couldn'tve").
_CONTRACTED = """ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't
hadn't've hasn't haven't he'd he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've
it'll ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't
'ow's'at shan't she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's
someone'd someone'd've someone'll someone's something'd something'd've something'll that's
there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't
we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd
who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all
y'all'll y'all'd've you'd you'd've you'll you're you've"""
CONTRACTED = tuple(_CONTRACTED.split())


def _contraction_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for form in CONTRACTED:
        cuts = [i for i, ch in enumerate(form) if ch == "'"]
        for i in cuts:
            table[form[:i] + form[i + 1 :]] = form
    # The official table's one reversed entry (it maps a contraction to its bare spelling).
    table["somebody'd"] = "somebodyd"
    return table


CONTRACTIONS = _contraction_table()
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
# The official pattern, as written: `(?!<=\d)` is a negative look-ahead for the text "<=" plus
# a digit (a look-behind was meant), so in effect a period is dropped unless a digit follows.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")


def normalise_punctuation(text: str) -> str:
    out = text
    number_comma = _COMMA_IN_NUMBER.search(text) is not None
    for p in PUNCTUATION:
        touches_space = (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if touches_space or number_comma else " ")
    return _PERIOD.sub("", out)


def normalise_words(text: str) -> str:
    """Lower case, number words to digits, articles dropped, contractions restored."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalise_answer(text: str) -> str:
    """The full normalisation of one answer (punctuation, then words)."""
    return normalise_words(normalise_punctuation(text))


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The official accuracy in [0, 1] of one predicted answer against the human answers."""
    if not answers:
        raise ValueError("VQA accuracy needs at least one human answer")
    humans = [_clean(a) for a in answers]
    pred = _clean(prediction)
    if len(set(humans)) > 1:
        humans = [normalise_answer(a) for a in humans]
        pred = normalise_answer(pred)
    hits = [h.lower() == pred.lower() for h in humans]
    total = sum(hits)
    # Leave answer i out: the matches among the other answers.
    return sum(min(1.0, (total - hit) / 3) for hit in hits) / len(hits)


def vqa_score(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean accuracy in percent over questions (the official `overall`, unrounded)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    if not predictions:
        return 0.0
    return (
        100.0
        * sum(vqa_accuracy(p, a) for p, a in zip(predictions, answers, strict=True))
        / len(predictions)
    )
