"""Evaluation protocols: few-shot, base-to-new (CoCoOp), cross-dataset / domain generalisation.

Tasks come from callables, so a protocol loads only what a missing run needs. Every run writes
one `result.json` (CLIP_benchmark keys + base/new/H) in a directory whose path says what ran:
`<runs_root>/<protocol>/<task>/<method tag>-<config hash>/k<K>-s<seed>`. A complete run is
skipped unless `force`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aape.config import TrainConfig
from aape.data import Task
from aape.evaluate import base_new_classes, evaluate, harmonic_mean, subset_task
from aape.train import TrainResult, train
from prompt_banks import atomic
from prompt_banks.schema import stable_hash

log = logging.getLogger(__name__)

RESULT_NAME = "result.json"
FEW_SHOTS = (1, 2, 4, 8, 16)
SEEDS = (1, 2, 3)


def with_lambda0(cfg: TrainConfig) -> list[TrainConfig]:
    """AAPE is always reported beside itself without L_distill (lambda = 0)."""
    if cfg.method == "aape" and cfg.lambda_distill > 0:
        return [cfg, cfg.model_copy(update={"lambda_distill": 0.0})]
    return [cfg]


def config_dir_name(cfg: TrainConfig) -> str:
    """Method tag + a hash of every switch except seed and device (one folder per setting)."""
    key = cfg.model_dump(exclude={"seed", "device", "checkpoint_every", "health_max_images"})
    return f"{cfg.tag()}-{stable_hash(key)[:8]}"


def run_dir(runs_root: Path, protocol: str, task_name: str, cfg: TrainConfig, leaf: str) -> Path:
    return Path(runs_root) / protocol / task_name / config_dir_name(cfg) / leaf


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
    record = json.loads(path.read_text(encoding="utf-8"))
    return record if record.get("complete") else None


def _record(
    protocol: str, task: Task, result: TrainResult, shots: int, seed: int, metrics: dict[str, Any]
) -> dict[str, Any]:
    return _clean(
        {
            "protocol": protocol,
            "task": task.name,
            "method": result.config.tag(),
            "shots": shots,
            "seed": seed,
            "model_id": task.model_id,
            "class_names": task.texts.names,
            "config": result.config.model_dump(),
            "health": result.health,
            "train_seconds": result.train_seconds,
            "created_at": datetime.now(UTC).isoformat(),
            "complete": True,
            "data": task.provenance,  # images used per split, shots policy, shared prompts
            **metrics,
        }
    )


def completed_run(folder: Path, force: bool) -> dict[str, Any] | None:
    """The complete record in `folder`, or None when the run is to be done (`force` clears the
    folder first: no stale checkpoint is resumed)."""
    existing = None if force else load_complete(folder)
    if existing is not None:
        log.info("skip complete run %s", folder)
        return existing
    if force and folder.exists():
        shutil.rmtree(folder)
    return None


def _pending(
    cfgs: list[TrainConfig], folder_of: Callable[[TrainConfig], Path], force: bool
) -> tuple[list[dict[str, Any]], list[TrainConfig]]:
    done, todo = [], []
    for cfg in cfgs:
        existing = completed_run(folder_of(cfg), force)
        if existing is not None:
            done.append(existing)
        else:
            todo.append(cfg)
    return done, todo


def _fit(task: Task, cfg: TrainConfig, folder: Path, progress: bool) -> TrainResult:
    ckpt = folder if cfg.method == "aape" else None
    return train(task, cfg, checkpoint_dir=ckpt, progress=progress)


def _publish(record: dict[str, Any], folder: Path) -> dict[str, Any]:
    write_json_atomic(record, folder / RESULT_NAME)
    return record


# One run of each protocol: train `cfg` (seeded), test, publish `folder/result.json`. The serial
# protocols below and the fan-out of aape.grid both call these.


def few_shot_run(
    task: Task, cfg: TrainConfig, folder: Path, shots: int, seed: int, progress: bool = True
) -> dict[str, Any]:
    result = _fit(task, cfg, folder, progress)
    metrics = evaluate(result.classifier, task.test, task.texts)
    return _publish(_record("few-shot", task, result, shots, seed, metrics), folder)


def base_to_new_run(
    task: Task, cfg: TrainConfig, folder: Path, shots: int, seed: int, progress: bool = True
) -> dict[str, Any]:
    """Train on the base classes of the full `task`; test on base and on new."""
    base_ids, new_ids = base_new_classes(len(task.texts.names))
    base_task = subset_task(task, base_ids, "base")
    result = _fit(base_task, cfg, folder, progress)
    base_m = evaluate(result.classifier, base_task.test, base_task.texts)
    if cfg.method == "linear_probe" or not new_ids:  # cannot name unseen classes
        new_m = {"acc1": float("nan")}
    else:
        new_task = subset_task(task, new_ids, "new")
        new_m = evaluate(result.classifier, new_task.test, new_task.texts)
    metrics = {
        "base": base_m["acc1"],
        "new": new_m["acc1"],
        "H": harmonic_mean(base_m["acc1"], new_m["acc1"]),
        "base_metrics": base_m,
        "new_metrics": new_m,
        "base_classes": base_task.texts.names,
    }
    return _publish(_record("base-to-new", task, result, shots, seed, metrics), folder)


def transfer_run(
    source: Task,
    targets: dict[str, Task],
    cfg: TrainConfig,
    folder: Path,
    *,
    protocol: str,
    shots: int,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on `source`; test on each target among the target's own classes."""
    result = _fit(source, cfg, folder, progress)
    per_target = {"source": evaluate(result.classifier, source.test, source.texts)}
    for name, target in targets.items():
        same = target.texts.names == source.texts.names
        if cfg.method == "linear_probe" and not same:
            per_target[name] = {"acc1": float("nan")}
        else:
            per_target[name] = evaluate(result.classifier, target.test, target.texts)
        per_target[name]["data"] = target.provenance
    metrics = {**per_target["source"], "targets": per_target}
    return _publish(_record(protocol, source, result, shots, seed, metrics), folder)


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
    cfgs, records = list(cfgs), []
    for k in shots:
        for seed in seeds:
            seeded = [c.model_copy(update={"seed": seed}) for c in cfgs]

            def folder(c: TrainConfig, k: int = k, seed: int = seed) -> Path:
                return run_dir(Path(runs_root), "few-shot", task_name, c, f"k{k}-s{seed}")

            done, todo = _pending(seeded, folder, force)
            records += done
            if not todo:
                continue
            task = make_task(k, seed)
            records += [few_shot_run(task, c, folder(c), k, seed, progress) for c in todo]
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
    cfgs, records = list(cfgs), []
    for seed in seeds:
        seeded = [c.model_copy(update={"seed": seed}) for c in cfgs]

        def folder(c: TrainConfig, seed: int = seed) -> Path:
            return run_dir(Path(runs_root), "base-to-new", task_name, c, f"k{shots}-s{seed}")

        done, todo = _pending(seeded, folder, force)
        records += done
        if not todo:
            continue
        task = make_task(seed)
        records += [base_to_new_run(task, c, folder(c), shots, seed, progress) for c in todo]
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
    cfgs, records = list(cfgs), []
    for seed in seeds:
        seeded = [c.model_copy(update={"seed": seed}) for c in cfgs]

        def folder(c: TrainConfig, seed: int = seed) -> Path:
            return run_dir(Path(runs_root), protocol, source_name, c, f"k{shots}-s{seed}")

        done, todo = _pending(seeded, folder, force)
        records += done
        if not todo:
            continue
        source = make_source(seed)
        loaded = {name: make() for name, make in targets.items()}
        records += [
            transfer_run(
                source, loaded, c, folder(c), protocol=protocol, shots=shots, seed=seed,
                progress=progress,
            )
            for c in todo
        ]  # fmt: skip
    return records
