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


def test_a_spec_that_is_not_utf8_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aape.cli.main import main

    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("domain: d\nclasses: [café, crème brûlée]\n".encode("latin-1"))
    with pytest.raises(UserError) as err:
        load_spec(latin1)
    assert str(err.value) == (
        f"--spec: {latin1} is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"
    )
    assert main(["bank", "generate", "--spec", str(latin1), "--home", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {err.value}\n"
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("domain: d\nclasses: [café]\n".encode("utf-8-sig"))  # what Notepad saves
    assert load_spec(bom).classes[0].name == "café"


def test_render_question_picks_the_article() -> None:
    assert (
        render_question("Describe what a(n) {} looks like.", "apple")
        == "Describe what an apple looks like."
    )
    assert (
        render_question("How can you identify a(n) {}?", "hole") == "How can you identify a hole?"
    )
    assert render_question("A photo of {}.", "Birman") == "A photo of Birman."
