"""Metrics, CoCoOp splits and the protocols' run directories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from aape.config import TrainConfig
from aape.evaluate import (
    average_row,
    base_new_classes,
    classification_metrics,
    harmonic_mean,
    subset_task,
)
from aape.protocols import RESULT_NAME, base_to_new, few_shot, transfer, with_lambda0
from aape.synthetic import make_task

FAST = TrainConfig(recipe="adamw", epochs=2, warmup_epochs=0, aggregator_heads=4)


def test_classification_metrics_by_hand() -> None:
    logits = torch.tensor([[3.0, 2, 1], [1, 3, 2], [3, 2, 1], [1, 2, 3]])
    labels = torch.tensor([0, 0, 1, 2])
    m = classification_metrics(logits, labels)
    assert m["acc1"] == pytest.approx(0.5)
    assert m["acc5"] == pytest.approx(1.0)  # k clipped to C
    assert m["per_class_recall"] == pytest.approx([0.5, 0.0, 1.0])
    assert m["mean_per_class_recall"] == pytest.approx(0.5)


def test_cocoop_split_and_harmonic_means() -> None:
    assert base_new_classes(5) == ([0, 1, 2], [3, 4])
    assert base_new_classes(4) == ([0, 1], [2, 3])
    assert harmonic_mean(0.8, 0.6) == pytest.approx(2 * 0.48 / 1.4)
    assert math.isnan(harmonic_mean(0.8, float("nan")))
    avg = average_row([{"base": 1.0, "new": 0.0}, {"base": 0.0, "new": 1.0}])
    assert avg == {"base": 0.5, "new": 0.5, "H": 0.5}  # H of the means, not the mean of H (= 0)


def test_subset_task_relabels_to_the_kept_classes() -> None:
    task = make_task(n_classes=5, dim=16)
    new = subset_task(task, [3, 4], "new")
    assert new.texts.names == ["class 3", "class 4"]
    assert set(new.test.labels.tolist()) == {0, 1}
    torch.testing.assert_close(new.texts.templates, task.texts.templates[3:])


def test_few_shot_writes_one_json_per_run_and_skips_complete_ones(tmp_path: Path) -> None:
    calls = []

    def make(k: int, seed: int):
        calls.append((k, seed))
        return make_task(n_classes=4, dim=16, shots=k, seed=seed, name="syn")

    cfgs = [*with_lambda0(FAST), FAST.model_copy(update={"method": "zeroshot"})]
    records = few_shot(make, "syn", cfgs, tmp_path, shots=[1, 2], seeds=[1], progress=False)
    assert len(records) == 6 and len(calls) == 2
    files = sorted(tmp_path.rglob(RESULT_NAME))
    assert len(files) == 6
    rel = files[0].relative_to(tmp_path).parts
    assert rel[:2] == ("few-shot", "syn") and rel[3] in ("k1-s1", "k2-s1")
    rec = json.loads(files[0].read_text())
    assert {"acc1", "acc5", "mean_per_class_recall", "config", "health"} <= set(rec)
    assert {r["method"] for r in records} == {
        "aape-attention-lam5-template-adamw",
        "aape-attention-lam0-template-adamw",
        "zeroshot",
    }
    # The task is built again (its model and bank are part of each run's identity), but
    # nothing is retrained: the records come back from disk, created_at included.
    again = few_shot(make, "syn", cfgs, tmp_path, shots=[1, 2], seeds=[1], progress=False)
    assert len(calls) == 4 and again == records
    (forced,) = few_shot(
        make, "syn", cfgs[:1], tmp_path, shots=[1], seeds=[1], force=True, progress=False
    )
    assert forced["created_at"] > records[0]["created_at"]


def test_base_to_new_reports_base_new_and_h(tmp_path: Path) -> None:
    def make(seed: int):
        return make_task(n_classes=5, dim=16, shots=2, seed=seed, name="syn")

    cfgs = [FAST, FAST.model_copy(update={"method": "linear_probe", "probe_steps": 5})]
    aape, probe = base_to_new(make, "syn", cfgs, tmp_path, seeds=[1], progress=False)
    assert aape["H"] == pytest.approx(harmonic_mean(aape["base"], aape["new"]))
    assert len(aape["base_metrics"]["per_class_recall"]) == 3
    assert len(aape["new_metrics"]["per_class_recall"]) == 2
    assert probe["new"] is None and probe["H"] is None  # cannot name unseen classes


def test_transfer_evaluates_on_the_targets_classes(tmp_path: Path) -> None:
    def source(seed: int):
        return make_task(n_classes=4, dim=16, seed=seed, name="src")

    targets = {"tgt": lambda: make_task(n_classes=6, dim=16, seed=9, name="tgt")}
    (rec,) = transfer(
        source,
        "src",
        targets,
        [FAST],
        tmp_path,
        seeds=[1],
        progress=False,
        protocol="domain-generalisation",
    )
    assert len(rec["targets"]["tgt"]["per_class_recall"]) == 6
    assert (tmp_path / "domain-generalisation" / "src").is_dir()
