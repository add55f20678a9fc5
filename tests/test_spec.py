"""Domain specs: the bundled ones load, and bad ones fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from prompt_banks.errors import UserError
from prompt_banks.spec import (
    DEFAULT_QUESTIONS,
    bundled_spec_path,
    load_spec,
    parse_spec,
    render_question,
)

COOP = {
    "imagenet": 1000,
    "caltech101": 100,
    "oxford-pets": 37,
    "stanford-cars": 196,
    "flowers102": 102,
    "food101": 101,
    "fgvc-aircraft": 100,
    "sun397": 397,
    "dtd": 47,
    "eurosat": 10,
    "ucf101": 101,
}


@pytest.mark.parametrize("domain", [*COOP, "textile-defects", "animal-mnist"])
def test_bundled_specs_load(domain: str) -> None:
    spec = load_spec(bundled_spec_path(domain))
    assert spec.domain == domain
    assert len(spec.classes) == COOP.get(domain, len(spec.classes))
    assert spec.questions == DEFAULT_QUESTIONS


def test_coop_names_come_from_the_shared_banks(shared_banks: Path) -> None:
    import json

    cars = json.loads((shared_banks / "protext" / "cars_prompts_full.json").read_text())
    spec = load_spec(bundled_spec_path("stanford-cars"))
    assert [c.name for c in spec.classes] == list(cars)


def test_defaults_are_cupl_s() -> None:
    spec = parse_spec({"domain": "d", "classes": ["a cat", {"name": "crane", "hint": "the bird"}]})
    assert (spec.samples_per_question, spec.temperature, spec.max_tokens, spec.stop) == (
        10,
        0.99,
        50,
        (".",),
    )
    assert spec.llm.backend == "local" and spec.clip.model == "aape-tiny"
    assert spec.classes[1].hint == "the bird" and spec.target_per_class == 50


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"domain": "d", "classes": ["a"], "samples": 3}, "'samples'"),
        ({"domain": "d", "classes": ["a"], "llm": {"temprature": 1}}, "'llm.temprature'"),
        (
            {"domain": "d", "classes": ["a"], "samples_per_question": "ten"},
            "'samples_per_question'",
        ),
        ({"domain": "d", "classes": [{"name": "a", "colour": "red"}]}, "'classes.0.colour'"),
        ({"domain": "D D", "classes": ["a"]}, "'domain'"),
        ({"domain": "d", "classes": []}, "'classes'"),
        ({"domain": "d", "classes": ["a"], "llm": {"backend": "gpt"}}, "'llm.backend'"),
        ({"domain": "d", "classes": ["a"], "questions": ["no slot"]}, "'questions'"),
    ],
)
def test_bad_specs_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(UserError, match=key):
        parse_spec(data)


def test_duplicate_classes_are_refused() -> None:
    with pytest.raises(UserError, match="same class"):
        parse_spec({"domain": "d", "classes": ["Sphynx", "sphynx "]})


def test_file_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: d\nclasses: [a\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_spec(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="mapping"):
        load_spec(bad)


def test_render_question_picks_the_article() -> None:
    assert (
        render_question("Describe what a(n) {} looks like.", "apple")
        == "Describe what an apple looks like."
    )
    assert (
        render_question("How can you identify a(n) {}?", "hole") == "How can you identify a hole?"
    )
    assert render_question("A photo of {}.", "Birman") == "A photo of Birman."
