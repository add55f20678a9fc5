"""The AAPE artifact: what inference needs and nothing more (no aggregator, no bank, no LLM).

A folder with `weights.safetensors` (h and g; with class_embed bank_mean/both also the mean bank
embedding of each class it can name), `config.json` (format, CLIP model id and how to load it,
d, the training switches, training classes, the test metrics of the run it came from) and
`manifest.json` (the sha256 of both, checked on every load). A few hundred KB at d = 512.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from aape.artifact_manifest import REMAKE, verify_manifest, write_manifest
from aape.config import TrainConfig
from aape.train import TrainResult
from prompt_banks.clip import CLIPRef, is_model_id_of
from prompt_banks.errors import UserError
from prompt_banks.json_files import read_json

FORMAT = "aape-artifact/1"
WEIGHTS_NAME = "weights.safetensors"
CONFIG_NAME = "config.json"
BANK_MEANS_KEY = "bank_means"
METRIC_KEYS = ("acc1", "acc5", "mean_per_class_recall", "base", "new", "H")


def needs_bank_means(class_embed: str) -> bool:
    return class_embed in ("bank_mean", "both")


def export_artifact(
    result: TrainResult,
    out_dir: str | Path,
    *,
    clip_ref: CLIPRef | None = None,
    metrics: dict[str, Any] | None = None,
    extra_bank_means: dict[str, torch.Tensor] | None = None,
    lineage: dict[str, Any] | None = None,
) -> Path:
    """Write the artifact of a trained AAPE to `out_dir` (replaced atomically). `metrics`
    default to those the run recorded beside its checkpoint (`run_record`).

    `extra_bank_means` adds mean bank embeddings of classes beyond the training ones (new classes
    to be predicted later; made ahead of time from their banks). `lineage` is the run's
    `aape.lineage.lineage` record: bank snapshot, LLMs, CLIP, features, code."""
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
        metrics=_metrics_of(result) if metrics is None else metrics,
        health=result.health,
        lineage=lineage or {},
    )
    return write_artifact_dir(out_dir, tensors, meta)


def cpu_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights as an artifact stores them: float32, CPU, contiguous."""
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def base_meta(
    fmt: str, model_id: str, clip_ref: CLIPRef | None, dim: int, config: dict[str, Any]
) -> dict[str, Any]:
    """The config.json keys every artifact has; refuses a `clip_ref` other than the run's CLIP."""
    if clip_ref is not None and not is_model_id_of(clip_ref, model_id):
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
    """Write `weights.safetensors`, `config.json` (format `meta["format"]`) and the manifest
    as `out_dir`, replacing any old folder atomically."""
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": meta["format"]})
    (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    write_manifest(tmp, [WEIGHTS_NAME, CONFIG_NAME])
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def read_artifact(
    folder: str | Path,
    fmt: str = FORMAT,
    how: str = "make one with `aape export`",
    config_model: type[TrainConfig] = TrainConfig,
    remake: str = REMAKE,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json contents, tensors) of an artifact of format `fmt` whose config is a
    `config_model`, or a UserError naming what is missing (`how` says how to make one, `remake`
    how to write a damaged one again)."""
    p = Path(folder)
    cfg_path, w_path = p / CONFIG_NAME, p / WEIGHTS_NAME
    if not cfg_path.is_file() or not w_path.is_file():
        raise UserError(f"--artifact: {p} has no {CONFIG_NAME} + {WEIGHTS_NAME}; {how}")
    verify_manifest(p, [CONFIG_NAME, WEIGHTS_NAME], remake)
    meta = read_json(cfg_path, "--artifact", f"{remake} instead of editing it")
    if meta.get("format") != fmt:
        raise UserError(f"--artifact: {p} is format {meta.get('format')!r}, expected {fmt}")
    dim = meta.get("dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise UserError(f"--artifact: {cfg_path} field dim is {dim!r}, not a positive integer")
    try:
        config_model(**meta.get("config", {}))
    except (TypeError, ValidationError) as exc:
        raise UserError(
            f"--artifact: {cfg_path} field config is not a valid training config ({_reason(exc)})"
        ) from exc
    try:
        return meta, load_file(str(w_path))
    except (OSError, SafetensorError) as exc:
        raise UserError(f"--artifact: {w_path} is not a safetensors file ({_reason(exc)})") from exc


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
    return " ".join(str(exc).split())


def _metrics_of(result: TrainResult) -> dict[str, Any]:
    """The test metrics recorded beside the run's checkpoint (none for a run without one)."""
    return {} if result.checkpoint is None else record_metrics(run_record(result.checkpoint))


def run_record(run: str | Path) -> dict[str, Any]:
    """What a run folder (or its checkpoint) says about its result: `metrics.json` (`aape
    train`) or `result.json` (`aape eval`); empty when it has neither."""
    p = Path(run)
    folder = p if p.is_dir() else p.parent
    for name in ("result.json", "metrics.json"):
        if (folder / name).is_file():
            return read_json(folder / name, "--run", "restore it, or train the run again")
    return {}


def record_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The test metrics of a run record, top level or under CLIP_benchmark's `metrics` key."""
    found = {**record, **(record.get("metrics") or {})}
    return {k: found[k] for k in METRIC_KEYS if found.get(k) is not None}
