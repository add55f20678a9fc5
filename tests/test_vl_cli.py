"""Retrieval end to end through the CLI: caption files with placeholder images are imported,
embedded, trained on, evaluated (JSON with CLIP_benchmark's keys + Markdown), and an artifact
ranks texts for images with `aape retrieve`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)
from vl_fixtures import caption_csv, karpathy_coco, karpathy_flickr

from aape.cli.main import main

FAST = ["--set", "adamw_epochs=3", "--set", "batch_size=4", "--set", "aggregator_heads=4"]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _json(text: str) -> object:
    return json.loads(text[text.index("{") if text.lstrip()[0] == "{" else text.index("[") :])


@pytest.mark.slow
def test_csv_and_karpathy_end_to_end(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = ["--home", str(home)]
    csv_file = caption_csv(tmp_path / "shop", 30)
    out = _run(capsys, "vl", "import-captions", "--format", "csv", "--file", str(csv_file),
               "--name", "shop", *h)  # fmt: skip
    assert _json(out)["written"] == 90
    coco = karpathy_coco(tmp_path / "coco", {"train": 24, "restval": 6, "val": 2, "test": 4})
    flickr = karpathy_flickr(tmp_path / "f30k", {"train": 6, "test": 8})
    _run(capsys, "vl", "import-captions", "--format", "karpathy", "--file", str(coco),
         "--images", str(tmp_path / "coco"), *h)  # fmt: skip
    _run(capsys, "vl", "import-captions", "--format", "karpathy", "--file", str(flickr),
         "--images", str(tmp_path / "f30k" / "flickr30k-images"), *h)  # fmt: skip
    encoded = {}
    for name in ("shop", "coco", "flickr30k"):
        report = _json(_run(capsys, "vl", "embed", "--dataset", name, "--quiet", *h))
        assert sum(report["features"]["missing_images"].values()) == 0
        encoded[name] = report["texts"]["encoded"]
    # The fixtures share sentences across files: a text is embedded once for all datasets.
    assert encoded["shop"] == 90 and 0 < encoded["coco"] < 180 and encoded["flickr30k"] < 70
    again = _json(_run(capsys, "vl", "embed", "--dataset", "coco", "--quiet", *h))
    assert again["texts"]["encoded"] == 0 and again["features"]["computed"] == 0

    trained = _json(_run(capsys, "vl", "train", "--dataset", "coco", "--quiet", *FAST, *h))
    assert trained["epochs"] == 3 and set(trained["health"]) >= {"teacher_acc", "student_acc"}
    lam0 = _json(_run(capsys, "vl", "train", "--dataset", "coco", "--quiet", *FAST,
                      "--set", "lambda_distill=0", *h))  # fmt: skip
    shop = _json(_run(capsys, "vl", "train", "--dataset", "shop", "--quiet", *FAST, *h))

    results = tmp_path / "results"
    table = _run(capsys, "vl", "eval", "--dataset", "flickr30k", "--artifact",
                 trained["artifact"], lam0["artifact"], "--out", str(results), *h)  # fmt: skip
    assert "| transfer | aape-attention-lam5-h-adamw | coco | flickr30k |" in table
    content = json.loads((results / "results.json").read_text())
    rows = content["rows"]
    assert [r["setting"] for r in rows] == ["zero-shot", "transfer", "transfer"]
    keys = {f"{side}_retrieval_recall@{k}" for side in ("image", "text") for k in (1, 5, 10)}
    for row in rows:
        assert set(row["metrics"]) == keys and row["n_images"] == 8 and row["n_captions"] == 40
        assert row["clip_benchmark"]["task"] == "zeroshot_retrieval"
        assert all(0.0 <= v <= 1.0 for v in row["metrics"].values())
    assert rows[0]["metrics"]["image_retrieval_recall@10"] == 1.0  # t2i over 8 images: certain
    assert (results / "results.md").read_text().startswith("| setting | method |")
    assert len(list((results / "clip_benchmark").glob("*.json"))) == 3
    fine = _run(capsys, "vl", "eval", "--dataset", "shop", "--artifact", shop["artifact"],
                "--out", str(tmp_path / "r2"), *h)  # fmt: skip
    assert "| fine-tuned |" in fine

    texts = tmp_path / "texts.txt"
    texts.write_text("A dog next to a dog in picture 0 number 0.\na red bus\n\nsnow\n")
    image = tmp_path / "shop" / "img" / "0.png"
    ranked = _json(_run(capsys, "retrieve", "--artifact", trained["artifact"], "--texts",
                        str(texts), "--top-k", "2", str(image)))  # fmt: skip
    assert ranked[0]["image"] == str(image) and len(ranked[0]["top_k"]) == 2
    assert {t["text"] for t in ranked[0]["top_k"]} <= {
        "A dog next to a dog in picture 0 number 0.", "a red bus", "snow",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["vl", "embed", "--dataset", "nope"], "--dataset: 'nope' has no captions in"),
        (["vl", "import-captions", "--format", "karpathy", "--file", "x.json"], "--images:"),
        (["retrieve", "--artifact", "nowhere", "--texts", "t.txt", "a.png"], "--texts:"),
        (["vl", "train", "--dataset", "x", "--set", "query=wrong"], "config query:"),
    ],
)
def test_cli_errors_are_one_line(
    argv: list[str], message: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--home", str(home)] if argv[0] == "vl" else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_retrieve_refuses_a_missing_artifact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = tmp_path / "t.txt"
    texts.write_text("a cat\n")
    assert main(["retrieve", "--artifact", str(tmp_path), "--texts", str(texts), "a.png"]) == 2
    assert "has no config.json + weights.safetensors; make one with `aape vl train`" in (
        capsys.readouterr().err
    )


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in (["vl", "import-captions"], ["vl", "train"], ["vl", "eval"], ["retrieve"]):
        with pytest.raises(SystemExit):
            main([*cmd, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_synthetic_captions_command(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(_run(capsys, "vl", "synthetic-captions", "--dataset", "animal-mnist",
                     "--max-per-split", "4", "--home", str(home)))  # fmt: skip
    assert out["dataset"] == "animal-mnist-synthetic-captions" and out["written"] == 60
    assert "SYNTHETIC" in out["note"] and len(list((home / "vl-images").rglob("*.png"))) == 12
