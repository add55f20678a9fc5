"""Run records as CLIP_benchmark result JSONs, so that `clip_benchmark build` aggregates them.

CLIP_benchmark writes one JSON per evaluation: `{"dataset", "model", "pretrained", "task",
"metrics": {"acc1", "acc5", "mean_per_class_recall", ...}, "language"}` with fractions (not
percent) and extra keys inside `metrics` where a task has them (its linear probe adds
`fewshot_k` and `seed`). Its `build` flattens `metrics` into the row, copies every other key
and adds `model_fullname = model + " " + pretrained`.

One of our runs becomes one such file per test set it was evaluated on:
- few-shot: the task's test split;
- base-to-new: `<task>/base` and `<task>/new` (each among its own classes), with `base`, `new`
  and `H` in `metrics` of both;
- cross-dataset / domain generalisation: the source, and each target under its own name.

`model` is the CLIP architecture and `pretrained` says which weights, which method (with its
config hash, so two settings of one method stay two rows) and how many shots:
`openai+aape-attention-lam5-template-coopsgd-1a2b3c4d+k16`. Every (model_fullname, dataset)
pair is then one method at one shot count; seeds are separate files (`metrics.seed`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prompt_banks.atomic import write_json_atomic

LANGUAGE = "en"  # our templates and banks are English
EXPORT_DIR = "clip_benchmark"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def cb_task(method: str) -> str:
    """CLIP_benchmark's task name for a config's `method`: what it would call the evaluation."""
    if method in ("zeroshot", "cupl"):
        return "zeroshot_classification"  # CuPL is CLIP_benchmark's --custom_template_file
    if method == "linear_probe":
        return "linear_probe"
    return "fewshot_adaptation"


def split_model_id(model_id: str) -> tuple[str, str]:
    """(architecture, weights) of a model id `arch/weights`; weights `unknown` when absent."""
    arch, sep, weights = (model_id or "unknown").partition("/")
    return arch, weights if sep and weights else "unknown"


def _metrics(m: dict[str, Any] | None) -> dict[str, Any]:
    m = m or {}
    return {k: m.get(k) for k in ("acc1", "acc5", "mean_per_class_recall")}


def _evaluations(rec: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(dataset, metrics, extra top-level keys) of each test set a run was evaluated on."""
    task = rec["task"]
    if rec["protocol"] == "base-to-new":
        bnh = {k: rec.get(k) for k in ("base", "new", "H")}
        return [
            (f"{task}/base", {**_metrics(rec.get("base_metrics")), **bnh}, {"split": "base"}),
            (f"{task}/new", {**_metrics(rec.get("new_metrics")), **bnh}, {"split": "new"}),
        ]
    targets = rec.get("targets")
    if targets:
        return [
            (task if name == "source" else name, _metrics(m), {"source": task})
            for name, m in targets.items()
        ]
    return [(task, _metrics(rec), {})]


def to_clip_benchmark(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The CLIP_benchmark result documents of one complete run record."""
    arch, weights = split_model_id(rec.get("model_id", ""))
    setting = Path(rec["_path"]).parent.name if rec.get("_path") else rec["method"]
    pretrained = f"{weights}+{setting}+k{rec['shots']}"
    docs = []
    for dataset, metrics, extra in _evaluations(rec):
        docs.append(
            {
                "dataset": dataset,
                "model": arch,
                "pretrained": pretrained,
                "task": cb_task((rec.get("config") or {}).get("method", rec["method"])),
                "metrics": {**metrics, "fewshot_k": rec["shots"], "seed": rec["seed"]},
                "language": LANGUAGE,
                "method": rec["method"],
                "protocol": rec["protocol"],
                **extra,
            }
        )
    return docs


def file_name(doc: dict[str, Any]) -> str:
    """A unique, filesystem-safe name (CLIP_benchmark's own output template uses '_' joins)."""
    parts = [doc["protocol"], doc["dataset"], doc["model"], doc["pretrained"]]
    parts += [doc["language"], doc["task"], f"s{doc['metrics']['seed']}"]
    return "__".join(_UNSAFE.sub("_", str(p)) for p in parts) + ".json"


def write_clip_benchmark(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One CLIP_benchmark JSON per (run, test set) in `out_dir`; stale files are removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for rec in records:
        for doc in to_clip_benchmark(rec):
            path = out_dir / file_name(doc)
            write_json_atomic(doc, path, allow_nan=False)
            written.append(path)
    for old in out_dir.glob("*.json"):
        if old not in written:
            old.unlink()
    return written
