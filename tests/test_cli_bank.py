"""`aape bank import|embed|stats|query|export` end to end, and every bad input of the issue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_store import emb_row, files_of

from aape.cli.main import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def banks(home: Path) -> dict[str, bytes]:
    return files_of(home) if home.exists() else {}


@pytest.fixture
def pets(tmp_path, capsys, home) -> Path:
    """A home with a small imported and embedded domain."""
    f = tmp_path / "pets.json"
    f.write_text(
        json.dumps(
            {
                "Sphynx": ["A hairless cat.", " A hairless cat.", "Wrinkled skin and big ears."],
                "Bengal": ["A spotted coat like a leopard.", "A muscular cat."],
            }
        )
    )
    assert run(capsys, "bank", "import", f, "--domain", "pets", "--home", home)[0] == 0
    code, out, _ = run(
        capsys,
        "bank",
        "embed",
        "--domain",
        "pets",
        "--clip-model",
        "aape-tiny",
        "--home",
        home,
        "--quiet",
    )
    assert code == 0 and "6 encoded" in out  # 4 distinct texts + 2 templates
    return home


def test_help_shows_examples(capsys):
    for sub in ("import", "embed", "stats", "query", "export"):
        with pytest.raises(SystemExit) as done:
            main(["bank", sub, "--help"])
        assert done.value.code == 0
        assert "examples:\n  aape bank " + sub in capsys.readouterr().out


def test_import_embed_stats_query_export(pets, capsys, tmp_path):
    home = pets
    code, out, _ = run(
        capsys,
        "bank",
        "embed",
        "--domain",
        "pets",
        "--clip-model",
        "aape-tiny",
        "--home",
        home,
        "--json",
        "--quiet",
    )
    assert code == 0 and json.loads(out)["encoded"] == 0  # second run: nothing to do

    code, out, _ = run(capsys, "bank", "stats", "--domain", "pets", "--home", home, "--json")
    s = json.loads(out)
    assert code == 0 and s["status"] == {"ok": 4, "dropped": 1, "failed": 0}
    assert s["embeddings"]["aape-tiny/random-seed0"]["embedded"] == 4
    code, out, _ = run(capsys, "bank", "stats", "--domain", "pets", "--home", home)
    assert code == 0 and "2 classes" in out and "1 dropped" in out

    code, out, _ = run(
        capsys,
        "bank",
        "query",
        "--domain",
        "pets",
        "--class",
        "SPHYNX",
        "--text",
        "a cat without hair",
        "--top-k",
        "2",
        "--json",
        "--clip-model",
        "aape-tiny",
        "--home",
        home,
    )
    hits = json.loads(out)
    assert code == 0 and len(hits) == 2
    assert {h["text"] for h in hits} <= {"A hairless cat.", "Wrinkled skin and big ears."}

    img = tmp_path / "cat.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8")).save(img)
    code, out, _ = run(
        capsys,
        "bank",
        "query",
        "--domain",
        "pets",
        "--class",
        "bengal",
        "--image",
        img,
        "--clip-model",
        "aape-tiny",
        "--home",
        home,
    )
    assert code == 0 and len(out.strip().splitlines()) == 2

    out_file = tmp_path / "export.json"
    code, out, _ = run(
        capsys, "bank", "export", "--domain", "pets", "--format", "cupl", out_file, "--home", home
    )
    assert code == 0 and json.loads(out_file.read_text()) == {
        "bengal": ["A spotted coat like a leopard.", "A muscular cat."],
        "sphynx": ["A hairless cat.", "Wrinkled skin and big ears."],
    }


def _bad_inputs(tmp_path: Path) -> list[tuple[str, list[str], str]]:
    def j(name: str, content: str) -> str:
        p = tmp_path / name
        p.write_text(content)
        return str(p)

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    return [
        (
            "missing file",
            ["bank", "import", str(tmp_path / "nope.json"), "--domain", "pets"],
            "no such file",
        ),
        (
            "malformed",
            ["bank", "import", j("m.json", '{"a": ["x",'), "--domain", "pets"],
            "not valid JSON",
        ),
        (
            "not str->[str]",
            ["bank", "import", j("n.json", '{"a": [1, 2]}'), "--domain", "pets"],
            "expected a list of strings",
        ),
        (
            "empty class",
            ["bank", "import", j("e.json", '{"a": ["x."], "b": []}'), "--domain", "pets"],
            "class 'b' has no texts",
        ),
        (
            "unknown model",
            ["bank", "embed", "--domain", "pets", "--clip-model", "ViT-Nope"],
            "not an open_clip architecture",
        ),
        (
            "unknown tag",
            [
                "bank",
                "embed",
                "--domain",
                "pets",
                "--clip-model",
                "ViT-B-16",
                "--pretrained",
                "nope",
            ],
            "is not a tag of ViT-B-16",
        ),
        ("unknown domain", ["bank", "stats", "--domain", "cars"], "'cars' is not in the store"),
        (
            "unknown class",
            [
                "bank",
                "query",
                "--domain",
                "pets",
                "--class",
                "dog",
                "--text",
                "x",
                "--clip-model",
                "aape-tiny",
            ],
            "'dog' is not in domain",
        ),
        (
            "bad image",
            [
                "bank",
                "query",
                "--domain",
                "pets",
                "--class",
                "bengal",
                "--image",
                j("img.png", "not an image"),
                "--clip-model",
                "aape-tiny",
            ],
            "not a readable image",
        ),
        (
            "bad rename",
            [
                "bank",
                "import",
                j("ok.json", '{"a": ["x."]}'),
                "--domain",
                "pets",
                "--rename",
                j("r.json", '["a"]'),
            ],
            "expected a JSON object",
        ),
        (
            "unwritable export",
            ["bank", "export", "--domain", "pets", str(blocker / "x.json")],
            "cannot write",
        ),
    ]


def test_every_bad_input_is_one_line_exit_2_and_leaves_the_store_as_it_was(pets, capsys, tmp_path):
    home = pets
    for what, argv, message in _bad_inputs(tmp_path):
        before = banks(home)
        code, _, err = run(capsys, *argv, "--home", home)
        assert code == 2, what
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, (what, err)
        assert banks(home) == before, what


def test_unwritable_home(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    f = tmp_path / "ok.json"
    f.write_text('{"a": ["x."]}')
    code, _, err = run(capsys, "bank", "import", f, "--domain", "d", "--home", blocker / "home")
    assert code == 2 and "writable" in err and err.count("\n") == 1
    assert blocker.read_text() == "x"


def test_store_written_by_another_dimension(capsys, tmp_path, home):
    from prompt_banks.store import BankStore

    f = tmp_path / "pets.json"
    f.write_text(json.dumps({"bengal": ["A spotted coat."]}))
    assert run(capsys, "bank", "import", f, "--domain", "pets", "--home", home)[0] == 0
    # A store where this model id already holds 4-float embeddings (written by another CLIP).
    BankStore(home / "banks").append_embeddings(
        [emb_row("stray", model_id="aape-tiny/random-seed0", dim=4)]
    )
    before = banks(home)
    for argv, message in (
        (
            ["bank", "embed", "--domain", "pets", "--clip-model", "aape-tiny", "--quiet"],
            "is stored with dim 4, this one has dim 64",
        ),
        (
            [
                "bank",
                "query",
                "--domain",
                "pets",
                "--class",
                "bengal",
                "--text",
                "x",
                "--clip-model",
                "aape-tiny",
            ],
            "embedding has 64 floats, the store's",
        ),
    ):
        code, _, err = run(capsys, *argv, "--home", home)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert message in err
    assert banks(home) == before


@pytest.mark.slow
def test_every_shared_file_imports_and_small_ones_embed_and_query(shared_banks, capsys, home):
    files = sorted(shared_banks.glob("*/*.json"))
    for f in files:
        domain = f"{f.parent.name}-{f.stem}"
        code, out, err = run(capsys, "bank", "import", f, "--domain", domain, "--home", home)
        assert code == 0, err
        if f.name == "imagenet_prompts_base.json":
            assert "collision: 'missile'" in out and "collision: 'sunglasses'" in out
    # Embedding all ~100k sentences is a benchmark's job; here the small banks of each format.
    for domain, cls in (
        ("dclip-descriptors_eurosat", "forest"),
        ("protext-EuroSAT", "Annual Crop Land"),
        ("cupl_full-cifar10_prompts_full", "airplane"),
    ):
        code, out, err = run(
            capsys,
            "bank",
            "embed",
            "--domain",
            domain,
            "--clip-model",
            "aape-tiny",
            "--home",
            home,
            "--quiet",
        )
        assert code == 0, err
        code, out, err = run(capsys, "bank", "stats", "--domain", domain, "--home", home, "--json")
        assert code == 0 and json.loads(out)["embeddings"]["aape-tiny/random-seed0"]["missing"] == 0
        code, out, err = run(
            capsys,
            "bank",
            "query",
            "--domain",
            domain,
            "--class",
            cls,
            "--text",
            "a satellite photo",
            "--clip-model",
            "aape-tiny",
            "--home",
            home,
        )
        assert code == 0 and out.strip(), err
