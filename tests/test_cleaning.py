"""Cleaning LLM answers and tolerant parsing of what backends return."""

from __future__ import annotations

import pytest

from prompt_banks.backends.base import parse_answer
from prompt_banks.cleaning import Deduplicator, clean_answer

Q = "Describe what a hole looks like."


def test_trims_cuts_at_first_sentence_and_ends_with_a_stop() -> None:
    got = clean_answer("  a hole is a round gap in the  fabric. It may fray", question=Q)
    assert (got.text, got.reason) == ("A hole is a round gap in the fabric.", None)
    # a server stop at "." removes the stop itself: put it back, as CuPL did
    assert clean_answer("A hole is a round gap in the fabric", question=Q).text.endswith("fabric.")


def test_chat_boilerplate_is_removed() -> None:
    assert clean_answer('Sure! "A hole shows the backing through the cloth."', question=Q).text == (
        "A hole shows the backing through the cloth."
    )
    assert (
        clean_answer("- Answer: a dark round gap in woven cloth", question=Q).text
        == "A dark round gap in woven cloth."
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty answer"),
        (None, "empty answer"),
        ("  ...  ", "empty answer"),
        ("I'm sorry, but I can't describe that.", "refusal"),
        ("As an AI, I cannot see images.", "refusal"),
        ("Describe what a hole looks like.", "echo of the question"),
        ("describe what a hole looks like", "echo of the question"),
        ("A gap.", "too-short (2 words < 3)"),
        ("Here is a step-by-step process:\n\n1", "preamble without a description"),
        ("To identify it, look for the following:", "preamble without a description"),
    ],
)
def test_bad_answers_are_dropped_with_a_reason(raw: str | None, reason: str) -> None:
    got = clean_answer(raw, question=Q)
    assert (got.text, got.reason) == (None, reason)


def test_duplicates_ignore_case_and_punctuation() -> None:
    d = Deduplicator(["A round gap in the fabric."])
    assert d.is_duplicate("a round gap in the fabric")
    assert not d.is_duplicate("A torn gap in the fabric.")
    assert d.is_duplicate("A torn gap, in the fabric!")


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ('{"description": "A red thread runs across."}', "A red thread runs across."),
        ('```json\n{"description": "Fibres stick out"}\n```', "Fibres stick out"),
        ('{"text": "Only one string value"}', "Only one string value"),
        ('{"description": "Cut off by max_tok', "Cut off by max_tok"),
        ("plain text answer", "plain text answer"),
        ("", ""),
        (None, ""),
    ],
)
def test_parse_answer_is_tolerant(text: str | None, answer: str) -> None:
    assert parse_answer(text) == answer
