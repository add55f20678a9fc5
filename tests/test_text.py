"""Text primitives on the real debris of the public banks."""

from __future__ import annotations

import json

import pytest

from prompt_banks.text import (
    canonical_class_name,
    first_sentence,
    is_fragment,
    normalize_whitespace,
    split_fused,
)

# Names from the shared banks that a naive lower->Upper rule would cut.
BRAND_NAMES = [
    "McLaren",
    "TrailBlazer",
    "ActiveHybrid",
    "4Runner",
    "SuperCab",
    "McDonnell",
    "iPod",
    "StabiliTrak",
    "TriStar",
    "EcoBoost",
    "xDrive",
    "MacBook",
    "iPhone",
]


def test_normalize_whitespace():
    assert normalize_whitespace("  a\t b\n\nc  ") == "a b c"
    assert normalize_whitespace("Cafe\u0301") == "Caf\u00e9"  # NFC


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("Sphynx", "sphynx"),
        (" sphynx ", "sphynx"),
        ("SPHYNX", "sphynx"),
        ("yin_yang", "yin yang"),
        ("outdoor  apartment_building", "outdoor apartment building"),
    ],
)
def test_canonical_class_name(raw, canonical):
    assert canonical_class_name(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "pieces"),
    [
        (
            " in terms of lightA background is white.",
            ["in terms of light", "A background is white."],
        ),
        (
            " modelThe exterior of a McLaren MP4-12C is sleek.",
            ["model", "The exterior of a McLaren MP4-12C is sleek."],
        ),
        (
            "A 2012 Toyota 4Runner SUV 2012The car is big.",
            ["A 2012 Toyota 4Runner SUV 2012", "The car is big."],
        ),
        ("It is an Audi S4 SedanThe car is red.", ["It is an Audi S4 Sedan", "The car is red."]),
        ("Honda Accord Coupe (DC2)The car", ["Honda Accord Coupe (DC2)", "The car"]),
        ("How can you tell?The answer is size.", ["How can you tell?", "The answer is size."]),
        (
            "a plant of the buttercup familyPincushion flowers are round.",
            ["a plant of the buttercup family", "Pincushion flowers are round."],
        ),
        (
            "The Chevrolet TrailBlazer SS has StabiliTrak and OnStar.",
            ["The Chevrolet TrailBlazer SS has StabiliTrak and OnStar."],
        ),
        (
            "Buy an iPod on eBay with xDrive and a LinkedIn profile.",
            ["Buy an iPod on eBay with xDrive and a LinkedIn profile."],
        ),
        ("The U.S.Army and Mr. Smith of St. Louis.", ["The U.S.Army and Mr. Smith of St. Louis."]),
        ('a shop called "The Coffee Shop."', ['a shop called "The Coffee Shop."']),
        ("It is big. It has wings.", ["It is big. It has wings."]),  # not fused: one answer
        ("   ", []),
    ],
)
def test_split_fused(raw, pieces):
    assert split_fused(raw) == pieces


def test_split_fused_on_the_real_car_bank_keeps_names_and_every_character(shared_banks):
    texts = [
        t
        for ts in json.loads(
            (shared_banks / "cupl_full/cars_prompts_full.json").read_text()
        ).values()
        for t in ts
    ]
    split = 0
    for t in texts:
        pieces = split_fused(t)
        # Only whitespace may be lost at a cut.
        assert "".join(pieces).replace(" ", "") == normalize_whitespace(t).replace(" ", "")
        for name in BRAND_NAMES:
            assert t.count(name) == sum(p.count(name) for p in pieces), (name, t)
        split += len(pieces) > 1
    # The car bank has over a hundred fused answers ("... in excellent conditionThis Ford ...").
    assert 100 < split < 600


def test_is_fragment():
    assert is_fragment("model")
    assert is_fragment(", from a fern")
    assert is_fragment("and Eating Birthday Cake")
    assert not is_fragment("A black BMW X5 SUV from 2007")


@pytest.mark.parametrize(
    ("raw", "first"),
    [
        ("  A cat has fur. It purrs.", "A cat has fur."),
        ("Mr. Smith owns a 3.5 litre car. It is red.", "Mr. Smith owns a 3.5 litre car."),
        ("Made in the U.S. by Ford. Big.", "Made in the U.S. by Ford."),
        ("A red flowerThe stem is long.", "A red flower"),
        ("Is it a bird? Yes.", "Is it a bird?"),
        ("no end at all", "no end at all"),
        ("", ""),
    ],
)
def test_first_sentence(raw, first):
    assert first_sentence(raw) == first
