"""The retrieval flow end to end on aape-tiny: a caption CSV and a Karpathy file with placeholder
images, against the session's Prefect API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vl_fixtures import caption_csv, karpathy_flickr

from aape.vl.config import RetrievalConfig
from pipelines.retrieval import CaptionSource, RetrievalParams, retrieval

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def test_retrieval_flow_imports_trains_and_evaluates(tmp_path: Path, home: Path) -> None:
    csv_file = caption_csv(tmp_path / "shop", 24)
    flickr = karpathy_flickr(tmp_path / "f30k", {"train": 4, "test": 6})
    params = RetrievalParams(
        home=str(home),
        sources=[
            CaptionSource(format="csv", file=str(csv_file), name="shop"),
            CaptionSource(
                format="karpathy",
                file=str(flickr),
                images=str(tmp_path / "f30k" / "flickr30k-images"),
            ),
        ],
        train_dataset="shop",
        test_datasets=["shop", "flickr30k"],
        config=RetrievalConfig(adamw_epochs=2, batch_size=4, aggregator_heads=4),
        out=str(tmp_path / "results"),
    )
    out = retrieval(params)
    assert [i["written"] for i in out["imported"]] == [72, 50]
    assert [t["method"] for t in out["train"]] == [
        "aape-attention-lam5-h-adamw", "aape-attention-lam0-h-adamw",
    ]  # fmt: skip
    settings = [r["setting"] for r in out["evaluate"]["flickr30k"]["rows"]]
    assert settings == ["zero-shot", "transfer", "transfer"]
    assert [r["setting"] for r in out["evaluate"]["shop"]["rows"]][1:] == ["fine-tuned"] * 2
    saved = json.loads((tmp_path / "results" / "flickr30k" / "results.json").read_text())
    assert "text_retrieval_recall@5" in saved["rows"][1]["metrics"]
    again = retrieval(params)  # a re-run imports and embeds nothing new, training resumes done
    assert [i["written"] for i in again["imported"]] == [0, 0]
    assert again["embed"]["shop"]["texts"]["encoded"] == 0
