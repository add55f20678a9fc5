"""VQAv2 and NoCaps files in their published shapes; the synthetic VQA set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vl_gen_fixtures import QUESTIONS, nocaps_val, vqa_files

from aape.vl.data import read_captions
from aape.vl.vqa_data import read_vqa, write_synthetic_vqa
from aape.vl.vqa_metrics import vqa_accuracy
from prompt_banks.errors import UserError


def test_read_vqav2(tmp_path: Path) -> None:
    q, a, images = vqa_files(tmp_path, n_images=2)
    vqa = read_vqa(q, a, images)
    assert vqa.name == "vqa-val2014" and vqa.subtype == "val2014"
    assert len(vqa.items) == 2 * len(QUESTIONS)
    first = vqa.items[0]
    assert first.question_id == 458752000 and first.image_id == 458752
    assert Path(first.image).name == "COCO_val2014_000000458752.jpg"
    assert first.answers == QUESTIONS[0][1] and first.answer_type == "other"
    assert len(vqa.images()) == 2
    # "2" x6 + "two" x3 + "3": normalised, "two" counts as "2": 9 of 10 -> 1.0
    counting = vqa.items[2]
    assert vqa_accuracy("two", counting.answers) == pytest.approx(1.0)


def test_vqa_errors(tmp_path: Path) -> None:
    q, a, images = vqa_files(tmp_path, n_images=1)
    with pytest.raises(UserError, match=r"--questions: .* does not exist"):
        read_vqa(tmp_path / "nope.json", a, images)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UserError, match="--annotations: cannot read"):
        read_vqa(q, broken, images)
    other = json.loads(a.read_text())
    other["annotations"] = other["annotations"][1:]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(other))
    with pytest.raises(UserError, match="no annotation for question 458752000"):
        read_vqa(q, partial, images)
    with pytest.raises(UserError, match="--images: 1 image files missing"):
        read_vqa(q, a, tmp_path / "elsewhere")


def test_nocaps_val_imports_as_coco_captions(tmp_path: Path) -> None:
    """NoCaps validation is COCO's captions format plus open_images_id/domain fields: the
    caption reader takes it with --format coco --split test."""
    path = nocaps_val(tmp_path, n_images=3)
    ds = read_captions("coco", path, images=str(tmp_path / "validation"), name="nocaps-val",
                       split="test")  # fmt: skip
    assert ds.name == "nocaps-val" and len(ds.images) == 3
    assert all(len(im.captions) == 10 and im.split == "test" for im in ds.images)


def test_synthetic_vqa_files_read_back(tmp_path: Path) -> None:
    from fake_images import write_image

    rows = [(str(write_image(tmp_path / f"src/{i}.png", i)), "test", c)
            for i, c in enumerate(["cat", "dog", "owl"])]  # fmt: skip
    q, a, images = write_synthetic_vqa(rows, ["cat", "dog", "owl"], tmp_path / "out",
                                       subtype="synthetictest")  # fmt: skip
    vqa = read_vqa(q, a, images)
    assert len(vqa.items) == 6
    assert (
        vqa.items[0].question == "What is in the picture?" and vqa.items[0].answers == ["cat"] * 10
    )
    yes_no = vqa.items[1]
    assert yes_no.question.startswith("Is this a") and yes_no.answers[0] in ("yes", "no")
    assert json.loads(q.read_text())["info"]["description"].startswith("SYNTHETIC")


def test_nocaps_cider_by_domain(tmp_path: Path) -> None:
    """Each NoCaps domain scored alone, with its own IDF (as NoCaps' evaluation does)."""
    from aape.vl.caption_metrics import cider_d_by_group
    from aape.vl.vqa_data import nocaps_domains

    path = nocaps_val(tmp_path, n_images=6)  # two images per domain (one alone has IDF 0)
    domains = nocaps_domains(path)
    assert set(domains.values()) == {"in-domain", "near-domain", "out-domain"}
    ds = read_captions("coco", path, images=str(tmp_path / "validation"), name="nocaps-val",
                       split="test")  # fmt: skip
    refs = {im.image_id: im.captions for im in ds.images}
    first = ds.images[0].image_id
    cands = {k: "a dog" for k in refs} | {first: refs[first][0]}
    by = cider_d_by_group(refs, cands, domains, tokenizer="python")
    assert set(by) == {"in-domain", "near-domain", "out-domain"}
    assert by[domains[first]] > by[next(d for k, d in domains.items() if k != first)]
    with pytest.raises(UserError, match="--nocaps-file"):
        nocaps_domains(tmp_path / "missing.json")
