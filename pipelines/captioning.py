"""Flow `captioning`: the captioning/VQA table, end to end on an embedded caption dataset.

For each row (LiMBeR, AAPE prefix lambda = 0, AAPE prefix lambda = 5): train the prefix on the
train split's cached features -> evaluate captions on the test split and, when given, VQA on a
VQAv2-format question set with K in-context examples; with `vqa_train`, also fine-tune that
row's prefix on the VQA train pairs (same config, from its weights) and evaluate its VQA answers
(0-shot: the fine-tuned protocol); then one Markdown report. The work is `aape.vl.gen_run`'s
and `aape.vl.gen_vqa_train`'s; the LM is loaded once per worker process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aape.vl.gen_config import GenConfig, baseline_rows
from aape.vl.gen_eval import DecodeOptions
from aape.vl.gen_report import markdown_report
from aape.vl.gen_run import evaluate_run, train_run
from aape.vl.gen_vqa_train import vqa_train_run
from aape.vl.vqa_data import read_vqa
from pipelines.common import clip_ref, short_model
from prompt_banks.spec import CLIPSettings


class VQAFiles(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    questions: str
    annotations: str
    images: str


class CaptioningParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    home: str | None = None  # a local folder: runs are written there
    train_dataset: str  # an embedded caption dataset (`aape vl embed`)
    test_dataset: str | None = None  # default: train_dataset's test split
    split: str = "test"
    vqa: VQAFiles | None = None
    vqa_support: VQAFiles | None = None  # few-shot examples (default: the VQA set itself)
    vqa_train: VQAFiles | None = None  # fine-tune each row on these pairs too (needs vqa)
    shots: list[int] = Field(default_factory=lambda: [0, 1, 2, 4])
    clip: CLIPSettings = CLIPSettings()
    config: GenConfig = GenConfig()
    decoding: str = "greedy"
    max_images: int | None = None
    out: str  # run folders and report.md go here
    progress: bool = False

    @model_validator(mode="after")
    def _fine_tuned_rows_need_questions(self) -> CaptioningParams:
        if self.vqa_train is not None and self.vqa is None:
            raise ValueError("vqa_train needs vqa: the questions the fine-tuned rows answer")
        return self


@task(cache_policy=NO_CACHE)
def train_row(name: str, cfg: GenConfig, params: CaptioningParams) -> str:
    _, folder = train_run(
        params.train_dataset, clip_ref(params.clip), cfg, home=params.home,
        out=Path(params.out) / name, progress=params.progress,
    )  # fmt: skip
    return str(folder)


def _vqa(files: VQAFiles | None):
    return None if files is None else read_vqa(files.questions, files.annotations, files.images)


@task(cache_policy=NO_CACHE)
def vqa_train_row(name: str, cfg: GenConfig, run: str, params: CaptioningParams) -> str:
    _, folder, _ = vqa_train_run(
        _vqa(params.vqa_train), clip_ref(params.clip),  # type: ignore[arg-type]
        cfg.model_copy(update={"init_from": run}), home=params.home,
        out=Path(params.out) / f"{name}-vqa-ft", captions=params.train_dataset,
        progress=params.progress,
    )  # fmt: skip
    return str(folder)


@task(cache_policy=NO_CACHE)
def evaluate_row(run: str, params: CaptioningParams, fine_tuned: bool = False) -> dict[str, Any]:
    """Captions and VQA of a caption-trained row; VQA alone, 0-shot, of a fine-tuned one."""
    return evaluate_run(
        run, clip_ref(params.clip), home=params.home,
        dataset=None if fine_tuned else params.test_dataset or params.train_dataset,
        split=params.split, vqa=_vqa(params.vqa), support=_vqa(params.vqa_support),
        shots=[0] if fine_tuned else params.shots,
        opts=DecodeOptions(decoding=params.decoding),  # type: ignore[arg-type]
        max_images=params.max_images, progress=params.progress,
    )  # fmt: skip


@task(cache_policy=NO_CACHE)
def report(evals: list[dict[str, Any]], out: str) -> str:
    path = Path(out) / "report.md"
    path.write_text(markdown_report(evals), encoding="utf-8")
    return str(path)


def _run_name() -> str:
    params: CaptioningParams = flow_run.parameters["params"]
    return f"captioning-{params.train_dataset}-{short_model(params.clip)}"


@flow(name="captioning", flow_run_name=_run_name)
def captioning(params: CaptioningParams) -> dict[str, Any]:
    """Train and evaluate the three rows (and their VQA fine-tuned runs), then write report.md."""
    evals = []
    for name, cfg in baseline_rows(params.config).items():
        run = train_row(name, cfg, params)
        evals.append(evaluate_row(run, params))
        if params.vqa_train is not None:
            evals.append(evaluate_row(vqa_train_row(name, cfg, run, params), params, True))
    return {"runs": [e["run"] for e in evals], "report": report(evals, params.out)}
