"""VQAv2 questions and annotations, read from the published JSON files, and a SYNTHETIC
question-answered set built from an offline dataset's labels in the same format.

- Questions (`v2_OpenEnded_mscoco_val2014_questions.json`): `{"info", "task_type":
  "Open-Ended", "data_type": "mscoco", "license", "data_subtype": "val2014", "questions":
  [{"image_id", "question", "question_id"}]}`.
- Annotations (`v2_mscoco_val2014_annotations.json`): `{"info", "license", "data_subtype",
  "data_type", "annotations": [{"question_type", "multiple_choice_answer", "answers": [10 x
  {"answer", "answer_confidence", "answer_id"}], "image_id", "answer_type", "question_id"}]}`.
- The image of a question is `<images>/COCO_<data_subtype>_<image_id, 12 digits>.jpg`
  (`image_pattern` changes it).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aape.vl.data import read_json
from aape.vl.synthetic import with_article
from prompt_banks.errors import UserError

COCO_PATTERN = "COCO_{subtype}_{image_id:012d}.jpg"
HOW = (
    "pass --questions with VQAv2's *_questions.json, --annotations with its *_annotations.json "
    "and --images with the image folder"
)


@dataclass
class VQAItem:
    question_id: int
    image_id: int
    image: str  # the file; also the key of its cached features
    question: str
    answers: list[str]  # the human answers (10 in VQAv2)
    answer_type: str = ""
    question_type: str = ""


@dataclass
class VQASet:
    name: str
    subtype: str
    items: list[VQAItem]
    synthetic: bool = False

    def images(self) -> list[str]:
        return sorted({it.image for it in self.items})


def _read(path: Path, what: str) -> Any:
    if not path.is_file():
        raise UserError(f"--{what}: {path} does not exist; {HOW}")
    return read_json(path, f"--{what}", HOW)


def read_vqa(
    questions: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    images: str | os.PathLike[str],
    *,
    name: str | None = None,
    image_pattern: str = COCO_PATTERN,
    check_images: bool = True,
) -> VQASet:
    """The questions with their human answers; every question needs an annotation."""
    qfile, afile, root = Path(questions), Path(annotations), Path(images).expanduser()
    qs, ans = _read(qfile, "questions"), _read(afile, "annotations")
    if not isinstance(qs, dict) or not isinstance(qs.get("questions"), list):
        raise UserError(f"--questions: {qfile} has no 'questions' list; {HOW}")
    if not isinstance(ans, dict) or not isinstance(ans.get("annotations"), list):
        raise UserError(f"--annotations: {afile} has no 'annotations' list; {HOW}")
    subtype = str(qs.get("data_subtype", ""))
    by_qid: dict[int, dict[str, Any]] = {}
    for a in ans["annotations"]:
        try:
            by_qid[int(a["question_id"])] = a
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"--annotations: {afile} has an annotation without question_id"
            ) from exc
    items = []
    for q in qs["questions"]:
        try:
            qid, image_id, text = int(q["question_id"]), int(q["image_id"]), str(q["question"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"--questions: {qfile} has a question without question_id/image_id/question"
            ) from exc
        a = by_qid.get(qid)
        if a is None:
            raise UserError(
                f"--annotations: {afile} has no annotation for question {qid}; pass the "
                "annotations file of the same split as the questions"
            )
        answers = [str(x["answer"]) for x in a.get("answers", []) if isinstance(x, dict)]
        if not answers:
            raise UserError(f"--annotations: question {qid} in {afile} has no answers")
        file = image_pattern.format(subtype=subtype, image_id=image_id)
        items.append(
            VQAItem(
                qid,
                image_id,
                str(root / file),
                text,
                answers,
                str(a.get("answer_type", "")),
                str(a.get("question_type", "")),
            )
        )
    if not items:
        raise UserError(f"--questions: {qfile} holds no questions; {HOW}")
    if check_images:
        missing = sorted({it.image for it in items if not Path(it.image).is_file()})
        if missing:
            raise UserError(
                f"--images: {len(missing)} image files missing under {root} "
                f"(first: {missing[0]}); {HOW}"
            )
    return VQASet(name or f"vqa-{subtype or qfile.stem}", subtype, items)


def _answers(answer: str) -> list[dict[str, Any]]:
    return [{"answer": answer, "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]


def write_synthetic_vqa(
    labelled: list[tuple[str, str, str]], classnames: list[str], out_dir: str | os.PathLike[str],
    *, subtype: str, seed: int = 0, first_id: int = 1,
) -> tuple[Path, Path, Path]:  # fmt: skip
    """SYNTHETIC VQAv2 files for (image path, split, class name) rows of one split: per image
    "What is in the picture?" -> the class, and "Is this <a class>?" -> yes / no (a seeded
    other class). The images are linked as COCO-named files, image ids from `first_id` (the
    splits of one set take disjoint ranges, so image and question ids never repeat across
    them). Returns (questions, annotations, image folder)."""
    folder = Path(out_dir)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{seed}:{subtype}")
    questions, annotations = [], []
    for image_id, (path, _split, cls) in enumerate(labelled, start=first_id):
        link = images / COCO_PATTERN.format(subtype=subtype, image_id=image_id)
        if not link.exists():
            link.symlink_to(Path(path).resolve())
        others = [c for c in classnames if c != cls] or [cls]
        asked = cls if rng.random() < 0.5 else rng.choice(others)
        qas = [
            ("What is in the picture?", cls, "other", "what is in the"),
            (
                f"Is this {with_article(asked)}?",
                "yes" if asked == cls else "no",
                "yes/no",
                "is this",
            ),
        ]
        for j, (q, a, atype, qtype) in enumerate(qas):
            qid = image_id * 10 + j
            questions.append({"image_id": image_id, "question": q, "question_id": qid})
            annotations.append(
                {
                    "question_type": qtype,
                    "multiple_choice_answer": a,
                    "answers": _answers(a),
                    "image_id": image_id,
                    "answer_type": atype,
                    "question_id": qid,
                }
            )
    info = {"description": "SYNTHETIC questions templated from class labels (not human)"}
    qfile, afile = folder / f"questions_{subtype}.json", folder / f"annotations_{subtype}.json"
    common = {"info": info, "license": {}, "data_subtype": subtype, "data_type": "synthetic"}
    qfile.write_text(json.dumps({**common, "task_type": "Open-Ended", "questions": questions}))
    afile.write_text(json.dumps({**common, "annotations": annotations}))
    return qfile, afile, images


def nocaps_domains(path: str | os.PathLike[str]) -> dict[str, str]:
    """`file_name` -> `domain` (in-domain | near-domain | out-domain) of a NoCaps captions file."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--nocaps-file: {file} does not exist; pass nocaps_val_4500_captions.json")
    try:
        images = json.loads(file.read_text(encoding="utf-8"))["images"]
        return {str(im["file_name"]): str(im["domain"]) for im in images}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"--nocaps-file: {file} is not a NoCaps captions file (images[].file_name/domain)"
        ) from exc
