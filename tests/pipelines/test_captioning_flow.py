"""The captioning flow end to end on the SYNTHETIC offline set (animal-mnist, aape-tiny, the
real SmolLM2), against the session's Prefect API: three rows trained, evaluated, each also
fine-tuned on the VQA train split and evaluated, reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from aape.vl.bank import caption_store
from aape.vl.run import embed_dataset
from aape.vl.synthetic import synthetic_captions
from aape.vl.synthetic_vqa import synthetic_vqa
from pipelines.captioning import CaptioningParams, VQAFiles, captioning
from prompt_banks.clip import CLIPRef

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def test_captioning_flow_trains_fine_tunes_and_reports(tmp_path: Path, home: Path) -> None:
    images = tmp_path / "png"
    ds = synthetic_captions("animal-mnist", images, max_per_split=4)
    caption_store(home).import_captions(ds)
    embed_dataset(ds.name, CLIPRef("aape-tiny"), home=home, progress=False)
    files = synthetic_vqa("animal-mnist", images, tmp_path / "vqa", max_per_split=4)
    params = CaptioningParams(
        home=str(home),
        train_dataset=ds.name,
        vqa=VQAFiles(**files["test"]),
        vqa_support=VQAFiles(**files["train"]),
        vqa_train=VQAFiles(**files["train"]),
        shots=[0, 1],
        config={"steps": 3, "batch_size": 4, "aggregator_heads": 4, "device": "cpu"},
        max_images=2,
        out=str(tmp_path / "flow"),
    )
    out = captioning(params)
    assert len(out["runs"]) == 6 and sum(r.endswith("-vqa-ft") for r in out["runs"]) == 3
    text = Path(out["report"]).read_text()
    assert all(f"| {m} |" in text for m in ("limber-k5", "aape-k5-lam0-before-hfinetune"))
    assert "| aape-k5-lam5-before-hfinetune |" in text and "VQA 1-shot" in text
    assert "| limber-k5 + VQA fine-tuning |" in text and "VQA fine-tuned 0-shot" in text
