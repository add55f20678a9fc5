"""CLIP_benchmark's class-name and template files import as what they are, never as a DCLIP bank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_store import files_of

from aape.cli.main import main
from prompt_banks.bank_formats import detect_format
from prompt_banks.errors import UserError
from prompt_banks.importers import import_file
from prompt_banks.input_files import load_class_list
from prompt_banks.queries import class_texts
from prompt_banks.store import BankStore

FIXTURES = Path(__file__).parent / "fixtures" / "clip_benchmark"
CLASSNAMES = FIXTURES / "en_classnames.json"
TEMPLATES = FIXTURES / "en_zeroshot_classification_templates.json"


@pytest.fixture
def store(tmp_path) -> BankStore:
    return BankStore(tmp_path / "banks")


def test_detection_tells_the_files_apart(shared_banks: Path) -> None:
    assert detect_format(json.loads(CLASSNAMES.read_text())) == "clip-benchmark-classnames"
    assert detect_format(json.loads(TEMPLATES.read_text())) == "clip-benchmark-templates"
    for f in ("dclip/descriptors_pets.json", "dclip/descriptors_eurosat.json"):
        assert detect_format(json.loads((shared_banks / f).read_text())) == "dclip"
    # CuPL's prompts inside a CLIP_benchmark custom template file keep their format.
    assert detect_format({"imagenet1k": {"tench": ["A fish."]}}) == "clip-benchmark"


def test_a_class_name_file_is_refused_as_a_bank_and_writes_nothing(tmp_path, store) -> None:
    import_file(store, TEMPLATES, domain="eurosat", classes=["forest"])
    before = files_of(tmp_path / "banks")
    for fmt in (None, "clip-benchmark-classnames"):
        with pytest.raises(UserError, match="class-name list, not a prompt bank") as err:
            import_file(store, CLASSNAMES, domain="flowers", fmt=fmt)
        assert "--classes en_classnames.json" in str(err.value) and "\n" not in str(err.value)
    assert files_of(tmp_path / "banks") == before


def test_class_lists_from_a_class_name_file_keep_their_quirks() -> None:
    assert load_class_list(CLASSNAMES, "eurosat")[:2] == ["annual crop land", "forest"]
    assert "head of a  crocodile" in load_class_list(CLASSNAMES, "caltech101")
    names = load_class_list(CLASSNAMES, "imagenet1k")
    assert len(names) == 8 and names.count("sunglasses") == 2  # repeats kept, in order
    assert load_class_list(CLASSNAMES, "fairface")[4] == "a latino man"
    with pytest.raises(
        UserError, match=r"\[clevr_closest_object_distance\]: class #3 has an empty"
    ):
        load_class_list(CLASSNAMES, "clevr_closest_object_distance")
    with pytest.raises(UserError, match="none named 'cifar10'; pass --dataset"):
        load_class_list(CLASSNAMES, "cifar10")


def test_templates_expand_over_a_class_name_list(store) -> None:
    classes = load_class_list(CLASSNAMES, "eurosat")
    report = import_file(store, TEMPLATES, domain="eurosat", classes=classes)
    assert report.fmt == "clip-benchmark-templates" and report.classes == 10
    assert report.rows == 30 and report.reference == "given" and not report.missing
    texts = class_texts(store, "eurosat")
    assert texts["river"] == [
        "a centered satellite photo of river.",
        "a centered satellite photo of a river.",
        "a centered satellite photo of the river.",
    ]
    # Another domain name, the dataset picked explicitly; a repeated class name is reported.
    names = load_class_list(CLASSNAMES, "imagenet1k")
    report = import_file(store, TEMPLATES, domain="inet", dataset="imagenet1k", classes=names)
    assert report.classes == 6 and sorted(report.collisions) == ["missile", "sunglasses"]
    assert class_texts(store, "inet")["kite (bird of prey)"] == [
        "itap of a kite (bird of prey).",
        "a bad photo of the kite (bird of prey).",
    ]
    bare = import_file(store, TEMPLATES, domain="kitti_closest_vehicle_distance", classes=["x y"])
    assert bare.rows == 1 and class_texts(store, "kitti_closest_vehicle_distance") == {
        "x y": ["x y"]
    }


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        ({"cifar10": ["a photo of a {c}."]}, {}, "pass --classes FILE"),
        ({"a": ["x {c}"], "b": ["y {c}"]}, {"classes": ["c"]}, "none named 'dom'; pass --dataset"),
        (
            {"dom": ["a photo of a {c}.", "no placeholder"]},
            {"classes": ["c"], "fmt": "clip-benchmark-templates"},
            "template 'no placeholder' has no {c}",
        ),
        ({"dom": []}, {"classes": ["c"], "fmt": "clip-benchmark-templates"}, "holds no templates"),
        # Unknown keys with many short phrases each: a class list by its shape, not DCLIP.
        ({"mine": [f"name {i}" for i in range(40)]}, {}, "look like class-name lists"),
    ],
)
def test_template_and_ambiguous_files_are_one_line_errors(
    tmp_path, store, content, kwargs, message
) -> None:
    f = tmp_path / "f.json"
    f.write_text(json.dumps(content))
    with pytest.raises(UserError, match=message) as err:
        import_file(store, f, domain="dom", **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "banks").exists() or not list((tmp_path / "banks").rglob("*.parquet"))


def test_cli_imports_templates_with_a_class_name_file(tmp_path, capsys, home) -> None:
    argv = ["bank", "import", str(TEMPLATES), "--domain", "my-cal", "--home", str(home)]
    code = main([*argv, "--dataset", "caltech101", "--classes", str(CLASSNAMES)])
    assert code == 0 and "6 classes, 18 rows" in capsys.readouterr().out
    code = main(["bank", "import", str(CLASSNAMES), "--domain", "flowers", "--home", str(home)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "not a prompt bank" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_the_real_packages_files(store) -> None:
    """The files CLIP_benchmark itself ships (the `dev` extra installs it)."""
    import clip_benchmark

    root = Path(clip_benchmark.__file__).parent / "datasets"
    names, templates = (
        root / "en_classnames.json",
        root / "en_zeroshot_classification_templates.json",
    )
    assert detect_format(json.loads(names.read_text())) == "clip-benchmark-classnames"
    assert detect_format(json.loads(templates.read_text())) == "clip-benchmark-templates"
    with pytest.raises(UserError, match="not a prompt bank"):
        import_file(store, names, domain="flowers")
    for dataset in ("eurosat", "pets", "flowers"):
        classes = load_class_list(names, dataset)
        report = import_file(store, templates, domain=dataset, classes=classes)
        assert report.classes == len(set(classes)) and not report.missing
    imagenet = load_class_list(names, "imagenet1k")
    assert len(imagenet) == 1000 and imagenet.count("sunglasses") == 2
    cupl = root / "cupl_prompts.json"
    assert detect_format(json.loads(cupl.read_text())) == "clip-benchmark"
