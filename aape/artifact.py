"""The AAPE artifact: what inference needs and nothing more (no aggregator, no bank, no LLM).

A folder with `weights.safetensors` (h and g; with class_embed bank_mean/both also the mean bank
embedding of each class it can name) and `config.json` (format, CLIP model id and how to load it,
d, the training switches, training classes, metrics). A few hundred KB at d = 512.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from aape.train import TrainResult
from prompt_banks.clip import CLIPRef
from prompt_banks.errors import UserError

FORMAT = "aape-artifact/1"
WEIGHTS_NAME = "weights.safetensors"
CONFIG_NAME = "config.json"
BANK_MEANS_KEY = "bank_means"


def needs_bank_means(class_embed: str) -> bool:
    return class_embed in ("bank_mean", "both")


def export_artifact(
    result: TrainResult,
    out_dir: str | Path,
    *,
    clip_ref: CLIPRef | None = None,
    metrics: dict[str, Any] | None = None,
    extra_bank_means: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the artifact of a trained AAPE to `out_dir` (replaced atomically).

    `extra_bank_means` adds mean bank embeddings of classes beyond the training ones (new classes
    to be predicted later; made ahead of time from their banks)."""
    if result.model is None:
        raise UserError(f"aape export: method {result.config.method} has no AAPE weights to export")
    meta = base_meta(FORMAT, result.model_id, clip_ref, result.dim, result.config.model_dump())
    tensors = cpu_tensors(result.model.inference_state())
    bank_classes: list[str] = []
    if needs_bank_means(result.config.class_embed):
        rows = [] if result.bank_means is None else list(result.bank_means)
        means = dict(zip(result.class_names, rows, strict=False))
        means.update(extra_bank_means or {})
        if not means:
            raise UserError("aape export: class_embed needs bank means but the run has none")
        bank_classes = list(means)
        tensors[BANK_MEANS_KEY] = torch.stack([means[c].float().cpu() for c in bank_classes])
    meta.update(
        training_classes=result.class_names,
        bank_mean_classes=bank_classes,
        metrics=metrics or {},
        health=result.health,
    )
    return write_artifact_dir(out_dir, tensors, meta)


def cpu_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights as an artifact stores them: float32, CPU, contiguous."""
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def base_meta(
    fmt: str, model_id: str, clip_ref: CLIPRef | None, dim: int, config: dict[str, Any]
) -> dict[str, Any]:
    """The config.json keys every artifact has; refuses a `clip_ref` other than the run's CLIP."""
    if clip_ref is not None and clip_ref.model_id != model_id:
        raise UserError(
            f"--clip-model: {clip_ref.model_id} is not the CLIP the run used ({model_id})"
        )
    return {
        "format": fmt,
        "clip_model_id": model_id,
        "clip": None
        if clip_ref is None
        else {"model": clip_ref.model, "pretrained": clip_ref.pretrained},
        "dim": dim,
        "config": config,
        "created_at": datetime.now(UTC).isoformat(),
    }


def write_artifact_dir(
    out_dir: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
    """Write `weights.safetensors` + `config.json` (format `meta["format"]`) as `out_dir`,
    replacing any old folder atomically."""
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": meta["format"]})
    (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def read_artifact(
    folder: str | Path, fmt: str = FORMAT, how: str = "make one with `aape export`"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json contents, tensors) of an artifact of format `fmt`, or a UserError naming
    what is missing (`how` says how to make one)."""
    p = Path(folder)
    cfg_path, w_path = p / CONFIG_NAME, p / WEIGHTS_NAME
    if not cfg_path.is_file() or not w_path.is_file():
        raise UserError(f"--artifact: {p} has no {CONFIG_NAME} + {WEIGHTS_NAME}; {how}")
    meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    if meta.get("format") != fmt:
        raise UserError(f"--artifact: {p} is format {meta.get('format')!r}, expected {fmt}")
    return meta, load_file(str(w_path))
