"""The ImageNet family from the real class lists: labels (wnids) identify classes, not names."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from fake_images import write_image
from imagenet_layouts import (
    CLASSES,
    coop_classnames,
    subset,
    wordnet_classnames,
    write_layout,
)

from aape.datasets import load_dataset
from aape.tasks import class_texts, shared_prompts
from prompt_banks.embed import embed_domain, encode_texts, template_text
from prompt_banks.errors import UserError
from prompt_banks.importers import import_file
from prompt_banks.paths import banks_dir
from prompt_banks.store import BankStore
from prompt_banks.text import canonical_class_name


def repeated(lines: list[tuple[str, str]]) -> dict[str, list[str]]:
    by_name: dict[str, list[str]] = {}
    for wnid, name in lines:
        by_name.setdefault(name, []).append(wnid)
    return {n: ws for n, ws in by_name.items() if len(ws) > 1}


def test_the_real_lists_have_the_quirks_the_loaders_must_take() -> None:
    coop, wordnet = coop_classnames(), wordnet_classnames()
    assert len(coop) == len(wordnet) == 1000 and [w for w, _ in coop] == sorted(w for w, _ in coop)
    assert repeated(coop) == {
        "missile": ["n03773504", "n04008634"],
        "sunglasses": ["n04355933", "n04356056"],
    }
    assert repeated(wordnet) == {
        "crane": ["n02012849", "n03126707"],
        "maillot": ["n03710637", "n03710721"],
    }
    names = dict(wordnet)
    assert (names["n02113186"], names["n02963159"]) == ("Cardigan", "cardigan")
    assert Counter(n.lower() for _, n in wordnet)["cardigan"] == 2
    assert len(subset("a")) == len(subset("r")) == 200 and subset("a") != subset("r")


@pytest.mark.parametrize("lines", [coop_classnames(), wordnet_classnames()], ids=["coop", "wn"])
def test_every_wnid_is_its_own_class(tmp_path: Path, lines: list[tuple[str, str]]) -> None:
    root = write_layout(tmp_path, lines)
    names = dict(lines)
    ds = load_dataset("imagenet", root)
    assert ds.class_keys == sorted(CLASSES) and ds.classnames == [names[w] for w in ds.class_keys]
    assert len(set(ds.classnames)) < ds.n_classes  # two names repeat, yet 13 classes
    assert {s: len(r) for s, r in ds.splits.items()} == {"train": 26, "test": 13}
    train = ds.splits["train"][0]
    assert train.image_id == f"images/train/{ds.class_keys[0]}/{ds.class_keys[0]}_1000.JPEG"
    # each variant: the classes whose folders it has, in wnid order
    v2 = load_dataset("imagenet-v2", root)
    assert v2.class_keys == ds.class_keys and v2.classnames == ds.classnames
    assert [r.label for r in v2.splits["test"]] == list(range(13))
    sketch = load_dataset("imagenet-sketch", root)
    assert sketch.class_keys == ds.class_keys and len(sketch.splits["test"]) == 13
    for name, which in (("imagenet-a", "a"), ("imagenet-r", "r")):
        variant = load_dataset(name, root)  # README.txt beside the class folders is no class
        assert variant.class_keys == sorted(set(CLASSES) & subset(which)), name
        assert list(variant.splits) == ["test"]
        assert [r.classname for r in variant.splits["test"]] == variant.classnames


def test_case_is_kept_cardigan_is_not_cardigan(tmp_path: Path) -> None:
    ds = load_dataset("imagenet", write_layout(tmp_path, wordnet_classnames()))
    corgi, sweater = ds.class_keys.index("n02113186"), ds.class_keys.index("n02963159")
    assert (ds.classnames[corgi], ds.classnames[sweater]) == ("Cardigan", "cardigan")
    assert ds.describe_class(sweater) == "'cardigan' (n02963159)"


def _names(base: Path, text: str) -> None:
    base.mkdir(parents=True, exist_ok=True)
    (base / "classnames.txt").write_text(text)


def test_bad_classnames_files_are_one_line_errors(tmp_path: Path) -> None:
    base = tmp_path / "imagenet-sketch"
    write_image(base / "images" / "n01440764" / "a.JPEG", 0)
    _names(base, "n01440764 tench\nn01440764 tench again\n")
    with pytest.raises(UserError, match=r"line 2 gives n01440764 a second time"):
        load_dataset("imagenet-sketch", tmp_path)
    _names(base, "n01440764\n")
    with pytest.raises(UserError, match=r"line 1 has no class name after 'n01440764'"):
        load_dataset("imagenet-sketch", tmp_path)
    _names(base, "\ufeffn01440764\ttench\r\n\r\n")  # a BOM, a tab, Windows line ends
    assert load_dataset("imagenet-sketch", tmp_path).classnames == ["tench"]
    _names(base, "n01443537 goldfish\n")
    with pytest.raises(UserError, match=r"folders \['n01440764'\] are not in"):
        load_dataset("imagenet-sketch", tmp_path)


def test_layout_mistakes_are_named(tmp_path: Path) -> None:
    base = tmp_path / "imagenet"
    _names(base, "n01440764 tench\nn01443537 goldfish\n")
    write_image(base / "images" / "train" / "n01440764" / "a.JPEG", 0)
    write_image(base / "images" / "val" / "ILSVRC2012_val_00000001.JPEG", 1)  # the flat tar
    with pytest.raises(UserError, match=r"images/val holds images but no class folders"):
        load_dataset("imagenet", tmp_path)
    write_image(base / "images" / "val" / "n01443537" / "b.JPEG", 2)
    with pytest.raises(UserError, match=r"class folders \['n01443537'\] that .* lacks"):
        load_dataset("imagenet", tmp_path)
    v2 = tmp_path / "imagenetv2"
    _names(v2, "n01440764 tench\nn01443537 goldfish\n")
    write_image(v2 / "imagenetv2-matched-frequency-format-val" / "7" / "x.jpeg", 3)
    with pytest.raises(UserError, match=r"folders \['7'\] that are not class indices 0..1"):
        load_dataset("imagenet-v2", tmp_path)


def test_templates_show_the_name_and_a_shared_bank_name_reaches_each_class(
    tmp_path: Path, home: Path, tiny_clip, caplog
) -> None:
    ds = load_dataset("imagenet", write_layout(tmp_path, wordnet_classnames(), train=1))
    bank = {
        canonical_class_name(n): [f"A photo showing a {n}.", f"It is a {n}."] for n in ds.classnames
    }
    (tmp_path / "bank.json").write_text(json.dumps(bank))
    store = BankStore(banks_dir(home))
    import_file(store, tmp_path / "bank.json", domain="wn")
    embed_domain(store, "wn", tiny_clip, progress=False)
    texts = class_texts(tiny_clip, ds.classnames, bank_domain="wn", home=home)
    want = encode_texts(tiny_clip, [template_text(n) for n in ds.classnames]).embeddings
    assert torch.allclose(texts.templates, want)
    corgi, sweater = ds.class_keys.index("n02113186"), ds.class_keys.index("n02963159")
    assert template_text(ds.classnames[corgi]) == "a photo of a Cardigan."
    assert not torch.allclose(texts.templates[corgi], texts.templates[sweater])
    assert texts.bank is not None and texts.bank_mask is not None
    assert torch.equal(texts.bank[corgi], texts.bank[sweater]) and texts.bank_mask[corgi].sum() == 2
    assert shared_prompts(ds) == {
        "cardigan": ["n02113186", "n02963159"],
        "crane": ["n02012849", "n03126707"],
        "maillot": ["n03710637", "n03710721"],
    }
    assert "bank: 3 names are shared by 6 classes of imagenet" in caplog.text
