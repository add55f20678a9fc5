"""Retrieval on real pixels offline: SYNTHETIC captions templated from textile-defects' labels
through aape-tiny, and CLIP_benchmark's `build` reading the result files we write."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from aape.vl.bank import caption_store
from aape.vl.config import RetrievalConfig
from aape.vl.run import embed_dataset, evaluate_dataset, train_dataset
from aape.vl.synthetic import synthetic_captions
from prompt_banks.clip import CLIPRef


@pytest.mark.slow
def test_synthetic_textile_captions_end_to_end(tmp_path: Path, home: Path, tiny_clip) -> None:
    ds = synthetic_captions("textile-defects", tmp_path / "png", max_per_split=30)
    assert ds.name == "textile-defects-synthetic-captions"
    report = caption_store(home).import_captions(ds)
    assert report.splits == {"train": 30, "val": 30, "test": 30} and report.captions == 450
    embedded = embed_dataset(ds.name, tiny_clip, home=home, progress=False)
    assert embedded["features"]["computed"] == 90
    assert embedded["features"]["images"] == {"train": 30, "val": 30, "test": 30}
    cfg = RetrievalConfig(adamw_epochs=2, batch_size=8, aggregator_heads=4)
    run = train_dataset(ds.name, CLIPRef("aape-tiny"), cfg, home=home, progress=False)
    assert run.artifact is not None and (run.artifact / "weights.safetensors").is_file()
    rows, written = evaluate_dataset(
        ds.name, CLIPRef("aape-tiny"), home=home, artifacts=[run.artifact], out=tmp_path / "res"
    )
    assert [r.setting for r in rows] == ["zero-shot", "fine-tuned"] and written["json"].is_file()
    assert rows[1].n_images == 30 and rows[1].n_captions == 150

    from clip_benchmark.cli import main_build  # the consumer of CLIP_benchmark result files

    out = tmp_path / "benchmark.csv"
    main_build(
        argparse.Namespace(files=[str(tmp_path / "res" / "clip_benchmark")], output=str(out))
    )
    with out.open() as f:
        built = list(csv.DictReader(f))
    assert len(built) == 2 and {r["task"] for r in built} == {"zeroshot_retrieval"}
    assert {float(r["text_retrieval_recall@5"]) for r in built} == {
        r.metrics["text_retrieval_recall@5"] for r in rows
    }
