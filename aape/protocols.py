"""Evaluation protocols: few-shot, base-to-new (CoCoOp), cross-dataset / domain generalisation.

Tasks come from callables. Every run writes one `result.json` (our keys + base/new/H; see
`aape.clip_benchmark_export` for CLIP_benchmark's schema) in a directory whose path says what
ran: `<runs_root>/<protocol>/<task>/<method tag>[@<bank domain>]-<identity hash>/k<K>-s<seed>`.
The identity (`run_identity`) holds everything that determines a result besides K and the seed
(config, CLIP model, bank domain + content), so two runs that differ in any of it never share a
folder. The Task is built first (its model and bank are part of the identity); a complete run
is then skipped, not retrained, unless `force`. A config repeated in one call runs once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aape.config import BANK_METHODS, TrainConfig
from aape.data import ClassTexts, Task
from aape.evaluate import base_new_classes, evaluate, harmonic_mean, subset_task
from aape.train import TrainResult, train
from prompt_banks import atomic
from prompt_banks.json_files import read_json
from prompt_banks.schema import stable_hash

log = logging.getLogger(__name__)

RESULT_NAME = "result.json"
QUARANTINE_FIX = "run `aape doctor --quarantine` to move it aside (the run is then redone)"
FEW_SHOTS = (1, 2, 4, 8, 16)
SEEDS = (1, 2, 3)
# Config fields that cannot change a run's result (the seed is the folder's leaf).
NOT_IDENTITY = frozenset({"seed", "device", "checkpoint_every", "health_max_images"})
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def with_lambda0(cfg: TrainConfig) -> list[TrainConfig]:
    """AAPE is always reported beside itself without L_distill (lambda = 0)."""
    if cfg.method == "aape" and cfg.lambda_distill > 0:
        return [cfg, cfg.model_copy(update={"lambda_distill": 0.0})]
    return [cfg]


def unique_configs(cfgs: Iterable[TrainConfig]) -> list[TrainConfig]:
    """`cfgs` without repeats (e.g. a method given as both --set and --baselines), in order."""
    seen: dict[str, TrainConfig] = {}
    for cfg in cfgs:
        seen.setdefault(stable_hash(cfg.model_dump(exclude=NOT_IDENTITY)), cfg)
    return list(seen.values())


@dataclass(frozen=True)
class RunInputs:
    """What a run reads besides its config, K and seed: the CLIP model, the bank
    ({"domain", "fingerprint"} or None) and protocol specifics (e.g. the transfer targets).
    Built from a loaded Task (`inputs_of`) or, without loading one, from the same parts."""

    model_id: str
    bank: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def bank_identity(texts: ClassTexts) -> dict[str, Any] | None:
    """The bank a task reads: its store domain and content fingerprint, or (a bank that did not
    come from a store, e.g. the simulation's) a digest of the tensors themselves."""
    if texts.bank is None:
        return None
    if texts.bank_id is not None:
        return {"domain": texts.bank_id.domain, "fingerprint": texts.bank_id.fingerprint}
    assert texts.bank_mask is not None
    digest = hashlib.sha256(texts.bank.contiguous().numpy().tobytes())
    digest.update(texts.bank_mask.contiguous().numpy().tobytes())
    return {"domain": None, "fingerprint": digest.hexdigest()[:32]}


def inputs_of(task: Task, **extra: Any) -> RunInputs:
    return RunInputs(model_id=task.model_id, bank=bank_identity(task.texts), extra=extra)


def run_identity(cfg: TrainConfig, inputs: RunInputs) -> dict[str, Any]:
    """Everything that determines a run besides K and the seed (the bank only for the methods
    that read it). The one definition: folders, records and anything that plans runs ahead."""
    return {
        "config": cfg.model_dump(exclude=NOT_IDENTITY),
        "model_id": inputs.model_id,
        "bank": inputs.bank if cfg.method in BANK_METHODS else None,
        **inputs.extra,
    }


def config_dir_name(cfg: TrainConfig, inputs: RunInputs) -> str:
    """Method tag, `@<bank domain>` when it reads one, and a hash of `run_identity`."""
    bank = run_identity(cfg, inputs)["bank"]
    label = f"@{_SLUG.sub('_', bank['domain'])}" if bank and bank.get("domain") else ""
    return f"{cfg.tag()}{label}-{stable_hash(run_identity(cfg, inputs))[:8]}"


def run_dir(
    runs_root: Path, protocol: str, task_name: str, cfg: TrainConfig, leaf: str, inputs: RunInputs
) -> Path:
    return Path(runs_root) / protocol / task_name / config_dir_name(cfg, inputs) / leaf


def _clean(value: Any) -> Any:
    """JSON without NaN: NaN becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(obj: dict[str, Any], path: Path) -> None:
    """Publish a run record as strict JSON (non-finite numbers become null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json_atomic(_clean(obj), path, allow_nan=False)


def load_complete(folder: Path) -> dict[str, Any] | None:
    path = folder / RESULT_NAME
    if not path.is_file():
        return None
    record = read_json(path, "runs", QUARANTINE_FIX)
    return record if record.get("complete") else None


def _record(
    protocol: str,
    task: Task,
    result: TrainResult,
    shots: int,
    seed: int,
    metrics: dict[str, Any],
    inputs: RunInputs,
) -> dict[str, Any]:
    return _clean(
        {
            "protocol": protocol,
            "task": task.name,
            "method": result.config.tag(),
            "shots": shots,
            "seed": seed,
            "model_id": task.model_id,
            "identity": run_identity(result.config, inputs),
            "bank": run_identity(result.config, inputs)["bank"],
            "class_names": task.texts.names,
            "config": result.config.model_dump(),
            "health": result.health,
            **({"probe": result.probe} if result.probe else {}),
            "train_seconds": result.train_seconds,
            "created_at": datetime.now(UTC).isoformat(),
            "complete": True,
            "data": task.provenance,  # images used per split, shots policy, shared prompts
            **metrics,
        }
    )


def _pending(
    cfgs: list[TrainConfig], folder_of: Callable[[TrainConfig], Path], force: bool
) -> tuple[list[dict[str, Any]], list[TrainConfig]]:
    done, todo = [], []
    for cfg in cfgs:
        existing = None if force else load_complete(folder_of(cfg))
        if existing is not None:
            log.info("skip complete run %s", folder_of(cfg))
            done.append(existing)
        else:
            if force and folder_of(cfg).exists():
                shutil.rmtree(folder_of(cfg))
            todo.append(cfg)
    return done, todo


def _fit(task: Task, cfg: TrainConfig, folder: Path, progress: bool) -> TrainResult:
    ckpt = folder if cfg.method == "aape" else None
    return train(task, cfg, checkpoint_dir=ckpt, progress=progress)


def few_shot(
    make_task: Callable[[int, int], Task],
    task_name: str,
    cfgs: Iterable[TrainConfig],
    runs_root: str | Path,
    *,
    shots: Iterable[int] = FEW_SHOTS,
    seeds: Iterable[int] = SEEDS,
    force: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train and test each config at each (K, seed); `make_task(K, seed)` builds the Task."""
    cfgs, records = unique_configs(cfgs), []
    for k in shots:
        for seed in seeds:
            seeded = [c.model_copy(update={"seed": seed}) for c in cfgs]
            task = make_task(k, seed)
            inputs = inputs_of(task)

            def folder(c: TrainConfig, k: int = k, seed: int = seed, i: RunInputs = inputs) -> Path:
                return run_dir(Path(runs_root), "few-shot", task_name, c, f"k{k}-s{seed}", i)

            done, todo = _pending(seeded, folder, force)
            records += done
            for cfg in todo:
                result = _fit(task, cfg, folder(cfg), progress)
                metrics = evaluate(result.classifier, task.test, task.texts)
                rec = _record("few-shot", task, result, k, seed, metrics, inputs)
                write_json_atomic(rec, folder(cfg) / RESULT_NAME)
                records.append(rec)
    return records


def base_to_new(
    make_task: Callable[[int], Task],
    task_name: str,
    cfgs: Iterable[TrainConfig],
    runs_root: str | Path,
    *,
    shots: int = 16,
    seeds: Iterable[int] = SEEDS,
    force: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """CoCoOp: train on the base classes (first ceil(C/2) labels); test on base and on new, each
    among its own classes; H = 2BN/(B+N). `make_task(seed)` builds the full K-shot Task."""
    cfgs, records = unique_configs(cfgs), []
    for seed in seeds:
        seeded = [c.model_copy(update={"seed": seed}) for c in cfgs]
        task = make_task(seed)
        inputs = inputs_of(task)

        def folder(c: TrainConfig, seed: int = seed, i: RunInputs = inputs) -> Path:
            return run_dir(Path(runs_root), "base-to-new", task_name, c, f"k{shots}-s{seed}", i)

        done, todo = _pending(seeded, folder, force)
        records += done
        if not todo:
            continue
        base_ids, new_ids = base_new_classes(len(task.texts.names))
        base_task = subset_task(task, base_ids, "base")
        new_task = subset_task(task, new_ids, "new")
        for cfg in todo:
            result = _fit(base_task, cfg, folder(cfg), progress)
            base_m = evaluate(result.classifier, base_task.test, base_task.texts)
            if cfg.method == "linear_probe" or not new_ids:  # cannot name unseen classes
                new_m = {"acc1": float("nan")}
            else:
                new_m = evaluate(result.classifier, new_task.test, new_task.texts)
            metrics = {
                "base": base_m["acc1"],
                "new": new_m["acc1"],
                "H": harmonic_mean(base_m["acc1"], new_m["acc1"]),
                "base_metrics": base_m,
                "new_metrics": new_m,
                "base_classes": base_task.texts.names,
            }
            rec = _record("base-to-new", task, result, shots, seed, metrics, inputs)
            write_json_atomic(rec, folder(cfg) / RESULT_NAME)
            records.append(rec)
    return records


def transfer(
    make_source: Callable[[int], Task],
    source_name: str,
    targets: dict[str, Callable[[], Task]],
    cfgs: Iterable[TrainConfig],
    runs_root: str | Path,
    *,
    protocol: str = "cross-dataset",
    shots: int = 16,
    seeds: Iterable[int] = SEEDS,
    force: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Cross-dataset and domain generalisation: train on the source Task, then test on each
    target's test images among the target's own classes (`protocol` names which)."""
    cfgs, records = unique_configs(cfgs), []
    for seed in seeds:
        seeded = [c.model_copy(update={"seed": seed}) for c in cfgs]
        source = make_source(seed)
        inputs = inputs_of(source, targets=sorted(targets))

        def folder(c: TrainConfig, seed: int = seed, i: RunInputs = inputs) -> Path:
            return run_dir(Path(runs_root), protocol, source_name, c, f"k{shots}-s{seed}", i)

        done, todo = _pending(seeded, folder, force)
        records += done
        if not todo:
            continue
        loaded = {name: make() for name, make in targets.items()}
        for cfg in todo:
            result = _fit(source, cfg, folder(cfg), progress)
            per_target = {"source": evaluate(result.classifier, source.test, source.texts)}
            for name, target in loaded.items():
                same = target.texts.names == source.texts.names
                if cfg.method == "linear_probe" and not same:
                    per_target[name] = {"acc1": float("nan")}
                else:
                    per_target[name] = evaluate(result.classifier, target.test, target.texts)
                per_target[name]["data"] = target.provenance
            metrics = {
                **per_target["source"],
                "targets": per_target,
                "target_banks": {n: bank_identity(t.texts) for n, t in loaded.items()},
            }
            rec = _record(protocol, source, result, shots, seed, metrics, inputs)
            write_json_atomic(rec, folder(cfg) / RESULT_NAME)
            records.append(rec)
    return records
