"""Caption datasets: images, each with its human captions, read from the public formats.

- Karpathy split files (`dataset_coco.json`, `dataset_flickr30k.json`, `dataset_flickr8k.json`):
  `{"images": [{"filename", "filepath" (COCO only), "split", "sentences": [{"raw", "tokens",
  "imgid", "sentid"}], "sentids", "imgid", "cocoid" (COCO only)}], "dataset": "coco"}`.
  The image is `<images>/<filepath>/<filename>`; COCO's `restval` images join train.
- COCO's official `captions_<split><year>.json`: `{"images": [{"id", "file_name", ...}],
  "annotations": [{"image_id", "id", "caption"}]}`; the image is `<images>/<file_name>`.
- A CSV (header `image,caption[,split]`) or JSONL (`{"image": ..., "caption": ...}` or
  `"captions": [...]`, optional `"split"`) of (image, caption) rows for any domain; image paths
  relative to the file's folder.

Only the annotation file and the image folder are checked here; the image files are checked when
their features are computed, with the classification datasets' rule (`--max-missing`).

Caption text is stored as given (`raw`) and with its whitespace collapsed (`text`, what CLIP
embeds): Karpathy's raw COCO captions end in spaces and hold double spaces, COCO's official ones
end in newlines. An empty caption is dropped and counted.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aape.datasets.base import SPLITS, require_files, seeded_split
from prompt_banks.errors import UserError
from prompt_banks.schema import stable_hash

CaptionFormat = Literal["karpathy", "coco", "csv", "jsonl"]
FORMATS: tuple[str, ...] = ("karpathy", "coco", "csv", "jsonl")
KARPATHY_SPLITS = ("train", "val", "test", "restval")
KARPATHY_HELP = (
    "pass --file with a Karpathy split file (dataset_coco.json, dataset_flickr30k.json) and "
    "--images with the folder its images are in"
)
COCO_HELP = "pass --file with COCO's captions_<split><year>.json and --images with its image folder"
TABLE_HELP = "pass --file with a CSV (header image,caption[,split]) or JSONL of image/caption rows"


@dataclass
class CaptionImage:
    """One image and its captions. `image_id` is stable across machines (the image's path
    relative to the image folder) and keys the feature cache and the caption bank."""

    image_id: str
    split: str  # train | val | test (restval already mapped)
    path: str  # the image file
    captions: list[str]  # raw, in the source's order; the position is the caption index
    source_split: str = ""  # as the source spelled it (restval)
    source_image_id: str | None = None  # cocoid / COCO image id
    source_caption_ids: list[int | None] = field(default_factory=list)  # sentid / annotation id


@dataclass
class CaptionDataset:
    name: str
    images: list[CaptionImage]
    source: str  # karpathy | coco | csv | jsonl | synthetic
    description: str = ""
    dropped_empty: int = 0  # empty captions left out

    def split(self, name: str) -> list[CaptionImage]:
        return [im for im in self.images if im.split == name]

    @property
    def n_captions(self) -> int:
        return sum(len(im.captions) for im in self.images)


def clean_caption(raw: str) -> str:
    """The text CLIP embeds: whitespace collapsed to single spaces, ends trimmed; case kept."""
    return " ".join(raw.split())


def check_name(name: str) -> str:
    """A dataset name keys stores and folders: letters, digits, `-`, `_`, `.` only."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        raise UserError(
            f"--name: '{name}' is not a dataset name; use letters, digits, '-', '_' or '.'"
        )
    return name


def read_json(path: Path, where: str, how: str) -> Any:
    """A JSON file, or the UserError "<where>: cannot read <path> (<reason>); <how>"."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{where}: cannot read {path} ({reason}); {how}") from exc


def _finish(
    name: str, images: list[CaptionImage], source: str, description: str, how: str
) -> CaptionDataset:
    """Drop empty captions (counted) and images left without any. The image files are checked
    when their features are computed (`aape vl embed`, with --max-missing)."""
    dropped = 0
    kept: list[CaptionImage] = []
    for im in images:
        pairs = [
            (c, i)
            for c, i in zip(
                im.captions, im.source_caption_ids or [None] * len(im.captions), strict=True
            )
            if clean_caption(c)
        ]
        dropped += len(im.captions) - len(pairs)
        if pairs:
            im.captions = [c for c, _ in pairs]
            im.source_caption_ids = [i for _, i in pairs]
            kept.append(im)
    if not kept:
        raise UserError(f"dataset {name}: no image with a non-empty caption; {how}")
    ids = [im.image_id for im in kept]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"dataset {name}: image {dup} is listed twice; merge its captions")
    return CaptionDataset(name, kept, source, description, dropped)


def read_karpathy(
    path: str | os.PathLike[str],
    images: str | os.PathLike[str],
    *,
    name: str | None = None,
    restval: Literal["train", "drop"] = "train",
) -> CaptionDataset:
    """A Karpathy split file; the name defaults to its `dataset` field (coco, flickr30k)."""
    file, root = Path(path).expanduser(), Path(images).expanduser().resolve()
    label = name or file.stem
    require_files(label, [file, root], KARPATHY_HELP)
    content = read_json(file, f"dataset {label}", KARPATHY_HELP)
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise UserError(
            f"dataset {label}: {file} is not a Karpathy split file (no 'images' list); "
            f"{KARPATHY_HELP}"
        )
    name = check_name(name or str(content.get("dataset") or file.stem))
    out: list[CaptionImage] = []
    for pos, entry in enumerate(content["images"]):
        try:
            filename, split = str(entry["filename"]), str(entry["split"])
            sentences = list(entry["sentences"])
        except (KeyError, TypeError) as exc:
            raise UserError(
                f"dataset {name}: {file} image #{pos} lacks filename, split or sentences; "
                f"{KARPATHY_HELP}"
            ) from exc
        if split not in KARPATHY_SPLITS:
            raise UserError(
                f"dataset {name}: {file} image {filename} has split '{split}'; "
                f"expected one of {', '.join(KARPATHY_SPLITS)}"
            )
        if split == "restval" and restval == "drop":
            continue
        image_id = f"{entry['filepath']}/{filename}" if entry.get("filepath") else filename
        captions: list[str] = []
        for s in sentences:
            raw = s.get("raw") if isinstance(s, dict) else None
            if raw is None and isinstance(s, dict) and isinstance(s.get("tokens"), list):
                raw = " ".join(str(t) for t in s["tokens"])  # a file without raw text
            captions.append(str(raw or ""))
        cocoid = entry.get("cocoid")
        out.append(
            CaptionImage(
                image_id=image_id,
                split="train" if split == "restval" else split,
                path=str(root / image_id),
                captions=captions,
                source_split=split,
                source_image_id=None if cocoid is None else str(cocoid),
                source_caption_ids=[
                    s.get("sentid") if isinstance(s, dict) else None for s in sentences
                ],
            )
        )
    return _finish(name, out, "karpathy", f"Karpathy split file {file}", KARPATHY_HELP)


def coco_split_of(file: Path) -> str:
    """The split of an official COCO captions file by its name: train* -> train, val* -> test
    (retrieval is evaluated on COCO's val images); anything else needs --split."""
    stem = file.stem.removeprefix("captions_")
    if stem.startswith("train"):
        return "train"
    if stem.startswith("val"):
        return "test"
    raise UserError(f"--split: cannot tell the split of {file.name}; pass --split train|val|test")


def read_coco_captions(
    path: str | os.PathLike[str],
    images: str | os.PathLike[str],
    *,
    name: str | None = None,
    split: str | None = None,
) -> CaptionDataset:
    """COCO's official captions file; the name defaults to `coco-<split><year>` of the file."""
    file, root = Path(path).expanduser(), Path(images).expanduser().resolve()
    name = check_name(name or "coco-" + file.stem.removeprefix("captions_"))
    require_files(name, [file, root], COCO_HELP)
    split = split or coco_split_of(file)
    if split not in SPLITS:
        raise UserError(f"--split: '{split}' is not one of {', '.join(SPLITS)}")
    content = read_json(file, f"dataset {name}", COCO_HELP)
    if not isinstance(content, dict) or not {"images", "annotations"} <= set(content):
        raise UserError(
            f"dataset {name}: {file} is not a COCO captions file (needs 'images' and "
            f"'annotations'); {COCO_HELP}"
        )
    files: dict[Any, str] = {}
    for im in content["images"]:
        try:
            files[im["id"]] = str(im["file_name"])
        except (KeyError, TypeError) as exc:
            raise UserError(f"dataset {name}: {file} has an image without id/file_name") from exc
    by_image: dict[Any, list[tuple[int, str]]] = {}
    for ann in content["annotations"]:
        try:
            image_key, caption = ann["image_id"], str(ann["caption"])
        except (KeyError, TypeError) as exc:
            raise UserError(
                f"dataset {name}: {file} has an annotation without image_id/caption"
            ) from exc
        if image_key not in files:
            raise UserError(
                f"dataset {name}: {file} annotation {ann.get('id')} names image {image_key}, "
                "which its 'images' list lacks"
            )
        by_image.setdefault(image_key, []).append((int(ann.get("id", 0)), caption))
    out = []
    for image_key in sorted(by_image, key=lambda k: files[k]):
        anns = sorted(by_image[image_key])  # annotation id order: stable across copies
        out.append(
            CaptionImage(
                image_id=files[image_key],
                split=split,
                path=str(root / files[image_key]),
                captions=[c for _, c in anns],
                source_split=split,
                source_image_id=str(image_key),
                source_caption_ids=[i for i, _ in anns],
            )
        )
    return _finish(name, out, "coco", f"COCO captions file {file}", COCO_HELP)


def table_name(path: Path) -> str:
    """`captions-<stem>-<hash of the absolute path>`: two files that share a stem never share
    cached features."""
    return f"captions-{path.stem}-{stable_hash(str(path.resolve()))[:8]}"


def _table_rows(path: Path, name: str) -> list[tuple[int, str, str, str | None]]:
    """(line, image, caption, split or None) of a CSV or JSONL file."""
    rows: list[tuple[int, str, str, str | None]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or [])
            if not {"image", "caption"} <= fields:
                raise UserError(f"dataset {name}: {path} header is {sorted(fields)}; {TABLE_HELP}")
            for line, row in enumerate(reader, start=2):
                split = (row.get("split") or "").strip() or None
                rows.append((line, (row["image"] or "").strip(), row["caption"] or "", split))
        return rows
    with path.open(encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
                image = str(obj["image"]).strip()
                caps = obj["captions"] if "captions" in obj else [obj["caption"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise UserError(
                    f"dataset {name}: {path} line {line} is not an object with image and "
                    f"caption (or captions); {TABLE_HELP}"
                ) from exc
            split = str(obj.get("split") or "").strip() or None
            rows += [(line, image, str(c), split) for c in caps]
    return rows


def read_caption_table(
    path: str | os.PathLike[str], *, name: str | None = None, images: str | None = None
) -> CaptionDataset:
    """(image, caption[, split]) rows; several rows of one image are its captions in file order.
    Images are relative to `images` (default: the file's folder). Without a split column the
    images get a seeded 50/20/30 train/val/test split (CoOp's proportions)."""
    file = Path(path).expanduser()
    fmt = file.suffix.lower().removeprefix(".")
    name = check_name(name or table_name(file))
    require_files(name, [file], TABLE_HELP)
    if fmt not in ("csv", "jsonl"):
        raise UserError(f"--file: {file} must end in .csv or .jsonl; {TABLE_HELP}")
    root = (Path(images).expanduser() if images else file.parent).resolve()
    by_image: dict[str, CaptionImage] = {}
    for line, image, caption, split in _table_rows(file, name):
        if not image:
            raise UserError(f"dataset {name}: {file} line {line} has an empty image")
        if split is not None and split not in SPLITS:
            raise UserError(
                f"dataset {name}: {file} line {line} has split '{split}'; use train, val or test"
            )
        im = by_image.setdefault(
            image, CaptionImage(image, split or "", str(root / image), [], split or "")
        )
        if split and im.split and split != im.split:
            raise UserError(
                f"dataset {name}: {file} line {line} puts image {image} in {split}, an "
                f"earlier line in {im.split}"
            )
        im.split = im.split or split or ""
        im.captions.append(caption)
    images_ = list(by_image.values())
    if any(not im.split for im in images_):
        assigned = seeded_split({0: [im.image_id for im in images_]}, dataset=name)
        for im in images_:
            im.split = im.split or assigned[im.image_id]
            im.source_split = im.source_split or im.split
    return _finish(name, images_, fmt, f"caption {fmt.upper()} {file}", TABLE_HELP)


def read_captions(
    fmt: str,
    path: str | os.PathLike[str],
    *,
    images: str | None = None,
    name: str | None = None,
    split: str | None = None,
    restval: Literal["train", "drop"] = "train",
) -> CaptionDataset:
    """Any of the formats by name (the CLI's and the flow's entry point)."""
    if fmt not in FORMATS:
        raise UserError(f"--format: '{fmt}' is not one of {', '.join(FORMATS)}")
    if fmt in ("csv", "jsonl"):
        return read_caption_table(path, name=name, images=images)
    if images is None:
        raise UserError(f"--images: the {fmt} format needs the folder its images are in")
    if fmt == "karpathy":
        return read_karpathy(path, images, name=name, restval=restval)
    return read_coco_captions(path, images, name=name, split=split)
