"""ImageNet and its four variants laid out as CoOp's DATASETS.md has them, from the real class
lists, with placeholder JPEGs for a handful of classes.

The class lists are the real ones, read from installed packages (never copied here):
- CoOp's `classnames.txt`: "<wnid> <name>" per line, the 1000 wnids in sorted order with CLIP's
  names (open_clip's IMAGENET_CLASSNAMES, which CoOp copied); it repeats "missile" and
  "sunglasses".
- a WordNet-style list in the same format: each synset's first lemma (timm's
  imagenet_synset_to_lemma.txt); it repeats "crane" and "maillot" and holds "Cardigan" (the
  corgi, n02113186) beside "cardigan" (the sweater, n02963159).
- ImageNet-A's and -R's 200 wnids (timm's imagenet_a_synsets.txt, imagenet_r_synsets.txt).

Subset approach: every folder gets the full 1000-line classnames.txt, as a real copy has, but
images exist only for `CLASSES`; the loaders take the class folders present as the classes (as
CoOp does for ImageNet, Sketch, A and R), like an ImageNet-100-style subset. A and R get only the
classes of `CLASSES` that are in their real 200-wnid lists.
"""

from __future__ import annotations

from pathlib import Path

import timm
from fake_images import write_image
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

TIMM_INFO = Path(timm.__file__).parent / "data" / "_info"

# The classes with images: every display-name collision of both lists, plus classes of A and R.
CLASSES = [
    "n01498041",  # stingray (ImageNet-A)
    "n01531178",  # goldfinch (ImageNet-A)
    "n01443537",  # goldfish (ImageNet-R)
    "n02012849",  # crane, the bird (CLIP: "crane bird")
    "n02113186",  # Cardigan, the corgi
    "n02963159",  # cardigan, the sweater
    "n03126707",  # crane, the machine (CLIP: "construction crane")
    "n03710637",  # maillot (CLIP: "tights")
    "n03710721",  # maillot, tank suit (CLIP: "one-piece bathing suit")
    "n03773504",  # missile (ImageNet-R)
    "n04008634",  # projectile (CLIP: "missile")
    "n04355933",  # sunglass (CLIP: "sunglasses")
    "n04356056",  # sunglasses
]


def wnids() -> list[str]:
    return (TIMM_INFO / "imagenet_synsets.txt").read_text().split()


def coop_classnames() -> list[tuple[str, str]]:
    """CoOp's classnames.txt as (wnid, name) pairs."""
    return list(zip(wnids(), IMAGENET_CLASSNAMES, strict=True))


def wordnet_classnames() -> list[tuple[str, str]]:
    """The WordNet-style list: (wnid, first lemma) for the 1000 classes."""
    lemmas = {}
    for line in (TIMM_INFO / "imagenet_synset_to_lemma.txt").read_text().splitlines():
        wnid, _, names = line.partition("\t")
        lemmas[wnid] = names.split(",")[0].strip()
    return [(w, lemmas[w]) for w in wnids()]


def subset(name: str) -> set[str]:
    """ImageNet-A's or -R's 200 wnids (`name` "a" or "r")."""
    return set((TIMM_INFO / f"imagenet_{name}_synsets.txt").read_text().split())


def write_layout(root: Path, lines: list[tuple[str, str]], train: int = 2) -> Path:
    """$DATA with imagenet/, imagenetv2/, imagenet-sketch/, imagenet-adversarial/ and
    imagenet-rendition/, each with the same classnames.txt (CoOp: "copy it there")."""
    text = "".join(f"{w} {n}\n" for w, n in lines)
    index = {w: i for i, (w, _) in enumerate(lines)}
    seed = 0

    def image(path: Path) -> None:
        nonlocal seed
        write_image(path, seed, size=(40, 32))
        seed += 1

    folders = {
        "imagenet": None,
        "imagenetv2": None,
        "imagenet-sketch": None,
        "imagenet-adversarial": "imagenet-a",
        "imagenet-rendition": "imagenet-r",
    }
    for folder, inner in folders.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "classnames.txt").write_text(text)
        if inner:  # the real archives ship a README.txt beside the 200 class folders
            (root / folder / inner).mkdir(exist_ok=True)
            (root / folder / inner / "README.txt").write_text("ImageNet-A/R: 200 classes\n")
    for k, wnid in enumerate(CLASSES):
        for i in range(train):
            image(root / "imagenet" / "images" / "train" / wnid / f"{wnid}_{1000 + i}.JPEG")
        image(root / "imagenet" / "images" / "val" / wnid / f"ILSVRC2012_val_{k:08d}.JPEG")
        v2 = root / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
        image(v2 / str(index[wnid]) / f"{k:04x}9d1e0c3b5a7f.jpeg")
        image(root / "imagenet-sketch" / "images" / wnid / "sketch_0.JPEG")
        if wnid in subset("a"):
            image(root / "imagenet-adversarial" / "imagenet-a" / wnid / "0.000116_x _ x_0.86.jpg")
        if wnid in subset("r"):
            image(root / "imagenet-rendition" / "imagenet-r" / wnid / "art_0.jpg")
    return root
