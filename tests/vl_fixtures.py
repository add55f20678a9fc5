"""Caption files in the public formats' exact shapes, with placeholder images (no downloads).

Shapes as the real files have them (read from copies quoted in public repositories):
- Karpathy COCO (`dataset_coco.json`): images carry `filepath` ("train2014" / "val2014"),
  `filename`, `cocoid`, `imgid`, `sentids`, `split` in train/val/test/restval; each sentence has
  `tokens`, `raw`, `imgid`, `sentid`; raw texts end in a space or hold double spaces.
- Karpathy Flickr30k (`dataset_flickr30k.json`): no `filepath`, no `cocoid`; `"dataset":
  "flickr30k"`.
- COCO's official `captions_val2014.json`: `info`, `licenses`, `images` (`id`, `file_name`,
  `coco_url`, `height`, `width`, ...), `annotations` (`image_id`, `id`, `caption`, captions
  ending in newlines or with a leading space).
"""

from __future__ import annotations

import json
from pathlib import Path

from fake_images import write_image

WORDS = ["dog", "cat", "boat", "tree", "car", "horse", "bird", "house"]


def _sentence(image: int, j: int) -> str:
    a, b = WORDS[image % len(WORDS)], WORDS[(image + j) % len(WORDS)]
    return f"A {a} next to a {b}  in picture {image} number {j}. "


def karpathy_flickr(root: Path, splits: dict[str, int], per_image: int = 5) -> Path:
    """root/dataset_flickr30k.json + root/flickr30k-images/<n>.jpg."""
    images, sentid, imgid = [], 0, 0
    for split, count in splits.items():
        for _ in range(count):
            filename = f"{1000092795 + imgid}.jpg"
            write_image(root / "flickr30k-images" / filename, imgid)
            sentences = []
            for j in range(per_image):
                raw = _sentence(imgid, j)
                tokens = raw.lower().replace(".", "").split()
                sentences.append({"tokens": tokens, "raw": raw, "imgid": imgid, "sentid": sentid})
                sentid += 1
            images.append(
                {
                    "sentids": [s["sentid"] for s in sentences],
                    "imgid": imgid,
                    "sentences": sentences,
                    "split": split,
                    "filename": filename,
                }
            )
            imgid += 1
    path = root / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return path


def karpathy_coco(root: Path, splits: dict[str, int], per_image: int = 5) -> Path:
    """root/dataset_coco.json + root/{train2014,val2014}/COCO_*_<id>.jpg (restval from val)."""
    images, sentid = [], 770337
    for imgid, split in enumerate(s for s, n in splits.items() for _ in range(n)):
        folder = "train2014" if split == "train" else "val2014"
        cocoid = 391895 + imgid
        filename = f"COCO_{folder}_{cocoid:012d}.jpg"
        write_image(root / folder / filename, 500 + imgid)
        sentences = []
        for j in range(per_image):
            raw = _sentence(imgid, j)
            sentences.append(
                {"tokens": raw.lower().split(), "raw": raw, "imgid": imgid, "sentid": sentid}
            )
            sentid += 1
        images.append(
            {
                "filepath": folder,
                "sentids": [s["sentid"] for s in sentences],
                "filename": filename,
                "imgid": imgid,
                "split": split,
                "sentences": sentences,
                "cocoid": cocoid,
            }
        )
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def coco_captions(root: Path, n_images: int, per_image: int = 5) -> Path:
    """root/annotations/captions_val2014.json + root/val2014/COCO_val2014_<id>.jpg."""
    images, annotations, ann_id = [], [], 38
    for i in range(n_images):
        image_id = 179765 + 7 * i
        name = f"COCO_val2014_{image_id:012d}.jpg"
        write_image(root / "val2014" / name, 900 + i)
        images.append(
            {
                "license": 4,
                "file_name": name,
                "coco_url": f"http://images.cocodataset.org/val2014/{name}",
                "height": 40,
                "width": 48,
                "date_captured": "2013-11-14 17:02:52",
                "flickr_url": "http://farm7.staticflickr.com/6116/1.jpg",
                "id": image_id,
            }
        )
        for j in range(per_image):
            text = _sentence(i, j).strip() + ("\n" if j % 2 else "")
            annotations.append({"image_id": image_id, "id": ann_id, "caption": " " + text})
            ann_id += 11
    annotations.reverse()  # the official file is not grouped by image
    path = root / "annotations" / "captions_val2014.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {
        "info": {"description": "This is stable 1.0 version of the 2014 MS COCO dataset."},
        "images": images,
        "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1}],
        "annotations": annotations,
    }
    path.write_text(json.dumps(content))
    return path


def caption_csv(root: Path, n_images: int, per_image: int = 3, split: bool = True) -> Path:
    """root/captions.csv (image,caption[,split]) + root/img/<i>.png."""
    lines = ["image,caption" + (",split" if split else "")]
    for i in range(n_images):
        write_image(root / "img" / f"{i}.png", 1300 + i)
        part = ("train", "train", "test")[i % 3]
        for j in range(per_image):
            row = f'img/{i}.png,"{_sentence(i, j).strip()}"'
            lines.append(row + (f",{part}" if split else ""))
    path = root / "captions.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def caption_jsonl(root: Path, n_images: int, per_image: int = 3) -> Path:
    """root/captions.jsonl, one line per image with a `captions` list."""
    lines = []
    for i in range(n_images):
        write_image(root / "pics" / f"{i}.png", 1700 + i)
        caps = [_sentence(i, j) for j in range(per_image)]
        lines.append(json.dumps({"image": f"pics/{i}.png", "captions": caps}))
    path = root / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
