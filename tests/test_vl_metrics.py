"""Captioning and VQA metrics against hand-computed cases and against pycocoevalcap itself."""

from __future__ import annotations

import math

import pytest
import torch

from aape.vl.caption_metrics import (
    cider_d,
    clip_scores,
    java_available,
    python_tokenize,
    resolve_tokenizer,
    tokenize,
)
from aape.vl.vqa_metrics import CONTRACTIONS, normalise_answer, vqa_accuracy, vqa_score
from prompt_banks.errors import UserError


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("yes", ["yes"] * 10, 1.0),
        ("Yes", ["yes"] * 10, 1.0),  # case never matters
        ("no", ["yes"] * 10, 0.0),
        # leave-one-out: 3 of 10 -> 3 subsets with 2 matches (2/3), 7 with 3 (1): 0.9
        ("red", ["red"] * 3 + ["blue"] * 7, 0.9),
        ("red", ["red"] * 2 + ["blue"] * 8, (2 * 1 / 3 + 8 * 2 / 3) / 10),  # 0.6
        ("red", ["red"] + [f"c{i}" for i in range(9)], 9 * (1 / 3) / 10),  # 0.3
        ("red", ["red"] * 4 + ["blue"] * 6, 1.0),
        # normalisation (the humans disagree): article, period, number word, contraction
        ("A dog.", ["dog"] * 5 + ["cat"] * 5, 1.0),
        ("two", ["2"] * 3 + ["many"] * 7, 0.9),
        ("dont", ["don't"] * 4 + ["no"] * 6, 1.0),
        ("1,000", ["1000"] * 3 + ["many"] * 7, 0.9),
        ("yes!", ["yes"] * 3 + ["no"] * 7, 0.9),
        ("  yes\n", ["yes"] * 3 + ["no"] * 7, 0.9),
        # the official shortcut: unanimous humans -> no normalisation at all
        ("the dog", ["dog"] * 10, 0.0),
        ("2", ["two"] * 10, 0.0),
    ],
)
def test_vqa_accuracy_hand_computed(prediction: str, answers: list[str], expected: float) -> None:
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


def test_normalisation_rules() -> None:
    assert normalise_answer("The two cats") == "2 cats"
    assert normalise_answer("2.5") == "2.5"  # a period before a digit stays
    assert normalise_answer("end.") == "end"
    assert normalise_answer("black/white") == "black white"  # touches no space: a space
    assert normalise_answer("black / white") == "black white"  # touches a space: deleted
    assert normalise_answer("isnt") == "isn't"
    assert CONTRACTIONS["couldnt've"] == CONTRACTIONS["couldn'tve"] == "couldn't've"
    assert "couldntve" not in CONTRACTIONS  # only one apostrophe dropped, as the table
    assert CONTRACTIONS["yall'd've"] == "y'all'd've"


def test_vqa_score_is_a_percentage_mean() -> None:
    assert vqa_score(["yes", "no"], [["yes"] * 10, ["yes"] * 10]) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        vqa_score(["yes"], [])


# Two images, one reference each, no n-gram shared between them.
REFS = {"1": ["a brown dog runs on the grass"], "2": ["two red cars parked near houses"]}


def test_cider_d_hand_computed() -> None:
    """Candidate 1 equals its reference: every n-gram cosine is 1 and the length penalty 1, so
    its CIDEr-D is 10 x mean over n of 1 = 10; candidate 2 shares nothing: 0; corpus 5."""
    cands = {"1": "a brown dog runs on the grass", "2": "an elephant eats some leaves"}
    score, per_image, used = cider_d(REFS, cands, tokenizer="python")
    assert used == "python"
    assert per_image == pytest.approx([10.0, 0.0])
    assert score == pytest.approx(5.0)


def test_cider_d_length_penalty() -> None:
    """One word fewer: the n-gram vectors differ and the Gaussian penalty exp(-1/72) applies."""
    cands = {"1": "a brown dog runs on the", "2": "two red cars parked near houses"}
    _, per_image, _ = cider_d(REFS, cands, tokenizer="python")
    assert per_image[1] == pytest.approx(10.0)
    assert 0 < per_image[0] < 10.0 * math.exp(-1 / 72)


def test_python_tokenizer() -> None:
    assert python_tokenize("A man's dog, running.") == "a man 's dog running"
    assert python_tokenize("It isn't RED!\n") == "it is n't red"


@pytest.mark.slow
@pytest.mark.skipif(not java_available(), reason="the PTB tokenizer needs Java")
def test_ptb_tokenizer_and_cider_equal_pycocoevalcap() -> None:
    """Our CIDEr-D with the PTB tokenizer is pycocoevalcap's own pipeline, number for number,
    and the python fallback tokenises these captions as PTB does."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs = {
        "a": ["A man's dog, running.", "A dog runs on grass. ", "The dog is running!"],
        "b": ["Two cars (red) parked.", "A red car near a house", "cars parked on a street"],
        "c": ["A bowl of soup; hot.", "soup in a white bowl", "A hot bowl of soup"],
    }
    cands = {"a": "a dog running on grass", "b": "a red car parked", "c": "a bowl of hot soup"}
    score, per_image, used = cider_d(refs, cands, tokenizer="ptb")
    assert used == "ptb"
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": c}] for k, c in cands.items()})
    ref_score, ref_per_image = Cider().compute_score(gts, res)
    assert score == pytest.approx(float(ref_score))
    assert per_image == pytest.approx([float(s) for s in ref_per_image])
    assert tokenize(refs, "python") == gts


def test_tokenizer_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import aape.vl.caption_metrics as cm

    assert resolve_tokenizer("python") == "python"
    monkeypatch.setenv("PATH", "/nonexistent")
    assert resolve_tokenizer("auto") == "python"
    with pytest.raises(UserError, match="needs Java"):
        resolve_tokenizer("ptb")
    assert cm.java_available() is False


def test_clip_scores_hand_computed() -> None:
    e = torch.eye(4)
    image = e[:3]
    cand = torch.stack([e[0], e[1], -e[2]])  # equal, equal, opposite
    refs = torch.stack([e[0], e[3], e[1] + e[2], e[2]])
    owner = torch.tensor([0, 0, 1, 2])
    clip_s, ref_s = clip_scores(image, cand, refs, owner)
    assert clip_s.tolist() == pytest.approx([2.5, 2.5, 0.0])
    # image 0: max ref cos 1 -> H(2.5, 1); image 1: ref cos 1/sqrt(2) -> H(2.5, 0.7071)
    h1 = 2 * 2.5 * (1 / math.sqrt(2)) / (2.5 + 1 / math.sqrt(2))
    assert ref_s.tolist() == pytest.approx([2 * 2.5 / 3.5, h1, 0.0])
