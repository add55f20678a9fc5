"""Captioning and VQA end to end on the SYNTHETIC offline set, through the CLI: templated
captions and questions for animal-mnist images, aape-tiny features, the real SmolLM2; train,
caption, answer (0- and 1-shot), report (the flow: tests/pipelines/test_captioning_flow.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from aape.cli.main import main

FAST = ["--set", "steps=12", "--set", "batch_size=4", "--set", "aggregator_heads=4",
        "--set", "device=cpu"]  # fmt: skip


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def synthetic(home: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    h = ["--home", str(home)]
    made = _run(capsys, "vl", "synthetic-captions", "--dataset", "animal-mnist",
                "--max-per-split", "6", *h)  # fmt: skip
    assert "SYNTHETIC" in made["note"]
    _run(capsys, "vl", "embed", "--dataset", "animal-mnist-synthetic-captions", "--quiet", *h)
    return _run(capsys, "vl", "synthetic-vqa", "--dataset", "animal-mnist", "--max-per-split",
                "6", *h)  # fmt: skip


@pytest.mark.slow
def test_caption_and_vqa_end_to_end(
    home: Path, synthetic: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = ["--home", str(home)]
    ds = "animal-mnist-synthetic-captions"
    runs = []
    for name, extra in [("limber", ["--set", "method=limber"]), ("aape", [])]:
        out = tmp_path / name
        trained = _run(capsys, "vl", "caption-train", "--dataset", ds, "--out", str(out),
                       "--quiet", *FAST, *extra, *h)  # fmt: skip
        assert trained["steps"] == 12 and trained["task_loss_last"] < trained["task_loss_first"]
        test = synthetic["test"]
        support = synthetic["train"]
        result = _run(
            capsys, "vl", "caption-eval", "--run", str(out), "--dataset", ds,
            "--questions", test["questions"], "--annotations", test["annotations"],
            "--images", test["images"], "--support-questions", support["questions"],
            "--support-annotations", support["annotations"], "--support-images",
            support["images"], "--shots", "0,1", "--max-images", "4", "--max-tokens", "8",
            "--tokenizer", "python", "--quiet", *h,
        )  # fmt: skip
        assert result["tokenizer"] == "python" and result["cider_d"] >= 0
        assert 0 <= result["clip_score"] <= 2.5 and set(result["vqa_accuracy"]) == {"0", "1"}
        runs.append(str(out))
    saved = json.loads(next((tmp_path / "aape").glob("eval-*.json")).read_text())
    assert len(saved["captioning"]["captions"]) == 4 and saved["vqa"]["synthetic"]
    assert saved["vqa"]["by_shots"]["1"]["n_questions"] == 4
    report = tmp_path / "report.md"
    assert main(["vl", "caption-report", "--runs", *runs, "--out", str(report)]) == 0
    text = report.read_text()
    assert report.with_suffix(".png").stat().st_size > 0  # the loss curves
    assert "| limber-k5 |" in text and "VQA 1-shot" in text and "Sample captions" in text


@pytest.mark.slow
def test_vqa_fine_tuning_end_to_end(
    home: Path, synthetic: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """caption-train -> vqa-train from its weights on the train split's questions (captions of
    the same images add L_distill) -> caption-eval on the test split's -> report with both
    protocols."""
    h = ["--home", str(home)]
    ds = "animal-mnist-synthetic-captions"
    train, test = synthetic["train"], synthetic["test"]
    captions = tmp_path / "captions"
    _run(capsys, "vl", "caption-train", "--dataset", ds, "--out", str(captions), "--quiet",
         *FAST, *h)  # fmt: skip
    vqa_files = ["--questions", train["questions"], "--annotations", train["annotations"],
                 "--images", train["images"]]  # fmt: skip
    tuned = tmp_path / "tuned"
    trained = _run(capsys, "vl", "vqa-train", *vqa_files, "--captions", ds, "--out", str(tuned),
                   "--set", f"init_from={captions}", "--quiet", *FAST, "--set", "steps=16",
                   "--set", "adamw_lr=3e-3", *h)  # fmt: skip
    assert trained["n_questions"] == 2 * trained["n_images"] and trained["n_images"] >= 4
    assert trained["images_with_captions"] == trained["n_images"]  # the same images
    assert trained["task_loss_last"] < trained["task_loss_first"]
    saved = json.loads((tuned / "train.json").read_text())
    assert saved["vqa_trained"] and saved["init_from"] == str(captions)
    assert sum(r["distill"] > 0 for r in saved["history"]) == 16
    ids = lambda f: {q["question_id"] for q in json.loads(Path(f).read_text())["questions"]}  # noqa: E731
    train_q, test_q = ids(train["questions"]), ids(test["questions"])
    assert train_q and test_q and not train_q & test_q  # the splits share no question or image
    assert not set(os.listdir(train["images"])) & set(os.listdir(test["images"]))
    evals = []
    for run in (captions, tuned):
        _run(capsys, "vl", "caption-eval", "--run", str(run), "--questions", test["questions"],
             "--annotations", test["annotations"], "--images", test["images"], "--max-images",
             "4", "--quiet", *h)  # fmt: skip
        evals.append(json.loads(next(run.glob("eval-*.json")).read_text()))
    assert [e["vqa"]["protocol"].split()[0] for e in evals] == ["zero/few-shot", "fine-tuned"]
    report = tmp_path / "report.md"
    assert main(["vl", "caption-report", "--runs", str(captions), str(tuned), "--out",
                 str(report)]) == 0  # fmt: skip
    text = report.read_text()
    assert "VQA 0-shot" in text and "VQA fine-tuned 0-shot" in text
    assert "aape-k5-lam5-before-hfinetune + VQA fine-tuning, 0-shot:" in text  # samples
    # A run of another k cannot start from these weights: one line naming the field.
    code = main(["vl", "vqa-train", *vqa_files, "--set", f"init_from={tuned}", "--set", "k=3",
                 "--out", str(tmp_path / "bad"), *h])  # fmt: skip
    assert code == 2 and "init_from:" in capsys.readouterr().err and not (tmp_path / "bad").exists()
