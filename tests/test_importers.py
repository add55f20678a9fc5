"""Import of public prompt files (CuPL, DCLIP, CLIP_benchmark) and export to CuPL JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_store import files_of

from prompt_banks.bank_formats import detect_format
from prompt_banks.errors import UserError
from prompt_banks.importers import dclip_sentence, export_cupl, import_file
from prompt_banks.queries import class_texts, list_classes
from prompt_banks.store import BankStore


def write(tmp_path: Path, name: str, content) -> Path:
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return p


def rows(store: BankStore, domain: str) -> list[dict]:
    with store.connect() as con:
        cur = con.execute(
            "SELECT * FROM descriptions WHERE domain = ? ORDER BY class_name, "
            "sample_index, clean_text",
            [domain],
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


@pytest.fixture
def store(tmp_path) -> BankStore:
    return BankStore(tmp_path / "banks")


@pytest.mark.slow
def test_every_shared_file_imports_and_reimport_writes_nothing(shared_banks, tmp_path):
    files = sorted(shared_banks.glob("*/*.json"))
    assert len(files) == 26
    store = BankStore(tmp_path / "banks")
    for f in files:
        domain = f"{f.parent.name}/{f.stem}"
        report = import_file(store, f, domain=domain)
        assert report.written == report.rows > 0
        assert report.fmt == ("dclip" if f.parent.name == "dclip" else "cupl")
        assert list_classes(store, domain) and all(
            n > 0 for n in list_classes(store, domain).values()
        )
        if f.name == "imagenet_prompts_base.json":
            assert report.reference == "imagenet"
            assert sorted(report.collisions) == ["missile", "sunglasses"]
    before = files_of(tmp_path)
    for f in files:
        assert import_file(store, f, domain=f"{f.parent.name}/{f.stem}").written == 0
    assert files_of(tmp_path) == before


def test_reference_class_list_collisions_and_missing(tmp_path, store):
    f = write(tmp_path, "b.json", {"sunglasses": ["Dark lenses."], "missile": ["A rocket."]})
    reference = ["sunglass", "sunglasses", "Sunglasses", "missile", "missile", "tench"]
    report = import_file(store, f, domain="mini", classes=reference)
    assert report.reference == "given"
    assert report.collisions == {
        "sunglasses": ["#1 sunglasses", "#2 Sunglasses"],
        "missile": ["#3 missile", "#4 missile"],
    }
    assert report.missing == ["sunglass", "tench"]
    assert report.extra == []
    other = write(tmp_path, "c.json", {"sunglass": ["One lens."], "tench": ["A fish."]})
    assert import_file(store, other, domain="mini2", classes=reference).extra == []
    odd = write(tmp_path, "d.json", {"goggles": ["Two lenses."], "tench": ["A fish."]})
    assert import_file(store, odd, domain="mini3", classes=reference).extra == ["goggles"]


def test_cupl_debris_is_cleaned_and_raw_text_kept(tmp_path, store):
    f = write(
        tmp_path,
        "b.json",
        {
            "Sphynx": [
                " A hairless cat.",
                "A hairless cat.",
                " in terms of lightA sphynx is pink.",
                "The McLaren of cats.",
                "   ",
            ],
            "yin_yang": ["A symbol."],
        },
    )
    report = import_file(store, f, domain="pets")
    assert report.fmt == "cupl" and report.classes == 2
    assert report.dropped == {"duplicate": 1, "fragment": 1, "empty": 1}
    got = rows(store, "pets")
    assert {r["class_name"] for r in got} == {"sphynx", "yin yang"}
    assert {r["raw_class_name"] for r in got} == {"Sphynx", "yin_yang"}
    ok = [r["clean_text"] for r in got if r["status"] == "ok" and r["class_name"] == "sphynx"]
    assert ok == ["A hairless cat.", "A sphynx is pink.", "The McLaren of cats."]
    dup = next(r for r in got if r["error"] and r["error"].startswith("duplicate"))
    assert dup["raw_text"] == "A hairless cat." and dup["error"] == "duplicate of sample 0"
    frag = next(r for r in got if r["error"] == "fragment")
    assert (
        frag["raw_text"] == " in terms of lightA sphynx is pink."
        and frag["clean_text"] == "in terms of light"
    )
    assert all(r["source"] == "import" for r in got)


def test_in_file_collision_is_an_error_naming_both(tmp_path, store):
    f = write(tmp_path, "b.json", {"Sphynx": ["A cat."], "sphynx": ["Another cat."]})
    with pytest.raises(UserError, match=r"'sphynx' <- \['Sphynx', 'sphynx'\]"):
        import_file(store, f, domain="pets")
    assert not (tmp_path / "banks").exists()
    # A rename resolves it.
    report = import_file(store, f, domain="pets", rename={"Sphynx": "sphynx cat"})
    assert sorted(list_classes(store, "pets")) == ["sphynx", "sphynx cat"]
    assert report.unused_renames == []


def test_rename_maps_keys_and_reports_unused(tmp_path, store):
    f = write(tmp_path, "b.json", {"Faces": ["A face."], "Leopards": ["A cat."]})
    report = import_file(
        store, f, domain="cal", rename={"faces": "face", "motorbikes": "motorbike"}
    )
    assert sorted(list_classes(store, "cal")) == ["face", "leopards"]
    assert report.unused_renames == ["motorbikes"]
    with pytest.raises(UserError, match="collide"):
        import_file(store, f, domain="cal2", rename={"Faces": "leopards"})


def test_dclip_sentences_and_classes_without_descriptors(tmp_path, store, shared_banks):
    assert dclip_sentence("cat", "four legs") == "cat, which has four legs"
    assert dclip_sentence("cat", "a small animal") == "cat, which is a small animal"
    assert dclip_sentence("cat", "has whiskers") == "cat, which has whiskers"
    assert dclip_sentence("cat", "used as a pet") == "cat, which is used as a pet"
    f = write(
        tmp_path,
        "d.json",
        {"Bombay_cat": ["black fur", "a small head"], "Saab 340": [], "Range Rover": ["", " "]},
    )
    report = import_file(store, f, domain="d", fmt="dclip")
    assert report.empty_classes == ["Saab 340", "Range Rover"]
    assert class_texts(store, "d") == {
        "bombay cat": ["Bombay cat, which has black fur", "Bombay cat, which is a small head"],
        "range rover": ["Range Rover"],
        "saab 340": ["Saab 340"],
    }
    data = json.loads((shared_banks / "dclip/descriptors_pets.json").read_text())
    assert detect_format(data) == "dclip"


def test_clip_benchmark_formats(tmp_path, store):
    generic = write(
        tmp_path,
        "t.json",
        {
            "cifar10": ["a photo of a {c}.", "a blurry photo of a {c}."],
            "imagenet1k": ["itap of a {c}."],
        },
    )
    with pytest.raises(UserError, match="--classes"):
        import_file(store, generic, domain="cifar10")
    report = import_file(store, generic, domain="cifar10", classes=["airplane", "Dog"])
    assert report.fmt == "clip-benchmark-templates"
    assert class_texts(store, "cifar10") == {
        "airplane": ["a photo of a airplane.", "a blurry photo of a airplane."],
        "dog": ["a photo of a Dog.", "a blurry photo of a Dog."],
    }
    specific = write(tmp_path, "s.json", {"pets": {"sphynx": ["A hairless cat."]}})
    assert import_file(store, specific, domain="pets").fmt == "clip-benchmark"
    assert class_texts(store, "pets") == {"sphynx": ["A hairless cat."]}
    with pytest.raises(UserError, match="none named 'cars'"):
        import_file(store, generic, domain="cars", classes=["a"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ([["a", "b"]], "top level is a list"),
        ({"cat": "A cat."}, "class 'cat' holds str"),
        ({"cat": ["A cat.", 3]}, "class 'cat' holds a list with non-strings"),
        ({"cat": ["A cat."], "dog": []}, "class 'dog' has no texts"),
        ({"cat": ["  ", ""]}, "class 'cat' has no usable text"),
        ({}, "holds no classes"),
        ('{"cat": ["A cat."], "cat": ["B."]}', "key 'cat' appears twice"),
        ({" ": ["A cat."]}, "class name is empty"),
    ],
)
def test_bad_files_are_one_line_errors_and_write_nothing(tmp_path, store, content, message):
    store.append_descriptions([])  # nothing
    import_file(store, write(tmp_path, "ok.json", {"ok": ["Fine."]}), domain="pets")
    before = files_of(tmp_path / "banks")
    f = write(tmp_path, "bad.json", content)
    with pytest.raises(UserError, match=message) as err:
        import_file(store, f, domain="pets", fmt="cupl")
    assert "\n" not in str(err.value) and str(f) in str(err.value)
    assert files_of(tmp_path / "banks") == before


def test_missing_file_and_unknown_format(tmp_path, store):
    with pytest.raises(UserError, match="no such file"):
        import_file(store, tmp_path / "nope.json", domain="x")
    f = write(tmp_path, "b.json", {"a": ["A."]})
    with pytest.raises(UserError, match="format"):
        import_file(store, f, domain="x", fmt="csv")


def test_export_cupl_round_trip(tmp_path, store, shared_banks):
    import_file(store, shared_banks / "cupl_full/pets_prompts_full.json", domain="pets")
    out = tmp_path / "out.json"
    done = export_cupl(store, "pets", out)
    exported = json.loads(out.read_text())
    assert done == {"classes": 37, "texts": sum(len(v) for v in exported.values())}
    assert exported == class_texts(store, "pets")
    import_file(store, out, domain="pets-again")
    assert class_texts(store, "pets-again") == exported
    with pytest.raises(UserError, match="no descriptions"):
        export_cupl(store, "nope", tmp_path / "x.json")
    with pytest.raises(UserError, match="writable"):
        export_cupl(store, "pets", tmp_path / "no-such-dir" / "x.json")
