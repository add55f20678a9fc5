"""VQAv2 and NoCaps files in their published shapes, with placeholder images (no downloads).

Shapes as the real files have them (read from copies quoted in public repositories):
- VQAv2 questions (`v2_OpenEnded_mscoco_val2014_questions.json`): `info`, `task_type`
  "Open-Ended", `data_type` "mscoco", `license` {url, name}, `data_subtype` "val2014",
  `questions` [{image_id, question, question_id}] with question_id = image_id * 1000 + j.
- VQAv2 annotations (`v2_mscoco_val2014_annotations.json`): `info`, `license`,
  `data_subtype`, `data_type`, `annotations` [{question_type, multiple_choice_answer, answers:
  10 x {answer, answer_confidence: yes|maybe|no, answer_id 1..10}, image_id, answer_type
  (yes/no | number | other), question_id}]. Images: `COCO_val2014_<12-digit id>.jpg`.
- NoCaps validation (`nocaps_val_4500_captions.json`): `licenses`, `info`, `images` [{id,
  open_images_id, height, width, coco_url, file_name, license, date_captured, domain
  (in-domain | near-domain | out-domain)}], `annotations` [{image_id, id, caption}], 10
  captions per image.
"""

from __future__ import annotations

import json
from pathlib import Path

from fake_images import write_image

LICENSE = {
    "url": "http://creativecommons.org/licenses/by/4.0/",
    "name": "Creative Commons Attribution 4.0 International License",
}
INFO = {"description": "This is v2.0 of the VQA dataset.", "url": "http://visualqa.org",
        "version": "2.0", "year": 2017, "contributor": "VQA Team",
        "date_created": "2017-04-26 17:07:13"}  # fmt: skip

# (question, 10 human answers, answer_type, question_type)
QUESTIONS = [
    ("What is this photo taken looking through?", ["net"] * 8 + ["netting", "mesh"], "other",
     "what is this"),
    ("Is the dog asleep?", ["no"] * 9 + ["yes"], "yes/no", "is the"),
    ("How many cats are there?", ["2"] * 6 + ["two"] * 3 + ["3"], "number", "how many"),
]  # fmt: skip


def vqa_files(root: Path, n_images: int = 2) -> tuple[Path, Path, Path]:
    """root/{questions,annotations}.json + root/val2014/COCO_val2014_*.jpg."""
    questions, annotations = [], []
    for i in range(n_images):
        image_id = 458752 + i * 131
        write_image(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg", i)
        for j, (q, answers, atype, qtype) in enumerate(QUESTIONS):
            qid = image_id * 1000 + j
            questions.append({"image_id": image_id, "question": q, "question_id": qid})
            conf = ["yes", "maybe", "yes", "no", "yes", "yes", "maybe", "yes", "yes", "yes"]
            annotations.append(
                {
                    "question_type": qtype,
                    "multiple_choice_answer": answers[0],
                    "answers": [
                        {"answer": a, "answer_confidence": c, "answer_id": k + 1}
                        for k, (a, c) in enumerate(zip(answers, conf, strict=True))
                    ],
                    "image_id": image_id,
                    "answer_type": atype,
                    "question_id": qid,
                }
            )
    common = {"info": INFO, "license": LICENSE, "data_subtype": "val2014", "data_type": "mscoco"}
    qfile = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    qfile.write_text(json.dumps({**common, "task_type": "Open-Ended", "questions": questions}))
    afile = root / "v2_mscoco_val2014_annotations.json"
    afile.write_text(json.dumps({**common, "annotations": annotations}))
    return qfile, afile, root / "val2014"


def nocaps_val(root: Path, n_images: int = 3) -> Path:
    """root/nocaps_val_4500_captions.json + root/validation/<open_images_id>.jpg."""
    domains = ["in-domain", "near-domain", "out-domain"]
    images, annotations = [], []
    for i in range(n_images):
        oid = f"{0x0013EA2087020901 + i:016x}"
        write_image(root / "validation" / f"{oid}.jpg", 50 + i)
        images.append(
            {
                "id": i,
                "open_images_id": oid,
                "height": 1024,
                "width": 732,
                "coco_url": f"https://s3.amazonaws.com/nocaps/val/{oid}.jpg",
                "file_name": f"{oid}.jpg",
                "license": 0,
                "date_captured": "2018-11-06 11:04:33",
                "domain": domains[i % 3],
            }
        )
        for j in range(10):
            annotations.append(
                {"image_id": i, "id": i * 10 + j, "caption": f"A baby is standing in room {i} {j}."}
            )
    path = root / "nocaps_val_4500_captions.json"
    info = {"url": "https://nocaps.org", "date_created": "2018/11/06", "version": "0.1",
            "description": "nocaps validation dataset", "contributor": "nocaps team",
            "year": 2018}  # fmt: skip
    path.write_text(json.dumps({"licenses": [], "info": info, "images": images,
                                "annotations": annotations}))  # fmt: skip
    return path
