"""Our results as CLIP_benchmark result JSONs, read back by the real `clip_benchmark build`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from aape.clip_benchmark_export import EXPORT_DIR, split_model_id, to_clip_benchmark
from aape.config import TrainConfig
from aape.protocols import base_to_new, few_shot, transfer
from aape.report import load_records, write_report
from aape.synthetic import make_task

FIXTURES = Path(__file__).parent / "fixtures" / "clip_benchmark"
FAST = TrainConfig(recipe="adamw", epochs=1, warmup_epochs=0, aggregator_heads=4)
CB_KEYS = {"dataset", "model", "pretrained", "task", "metrics", "language"}


def _runs(root: Path, second: str = "cupl") -> None:
    """Real runs of the three protocols on small synthetic tasks: zeroshot and `second` few-shot,
    zeroshot for base-to-new and domain generalisation."""

    def make(k: int, seed: int):
        return make_task(n_classes=6, dim=16, shots=k, seed=seed, name="syn")

    cfgs = [
        FAST.model_copy(update={"method": "zeroshot"}),
        FAST.model_copy(update={"method": second, "probe_refine_steps": 0}),
    ]
    few_shot(make, "syn", cfgs, root, shots=[1, 2], seeds=[1, 2], progress=False)
    base_to_new(lambda s: make(2, s), "syn", cfgs[:1], root, shots=2, seeds=[1], progress=False)
    targets = {"tgt": lambda: make_task(n_classes=5, dim=16, seed=9, name="tgt")}
    transfer(lambda s: make(2, s), "syn", targets, cfgs[:1], root, shots=2, seeds=[1],
             progress=False, protocol="domain-generalisation")  # fmt: skip


def test_export_has_clip_benchmarks_shape_and_units(tmp_path: Path) -> None:
    _runs(tmp_path)
    records = load_records(tmp_path)
    real = json.loads((FIXTURES / "result_zeroshot_classification.json").read_text())
    docs = [d for r in records for d in to_clip_benchmark(r)]
    assert len(docs) == 8 + 2 + 2  # few-shot 2 methods x 2 K x 2 seeds; base + new; source + tgt
    for doc in docs:
        assert set(doc) >= CB_KEYS and set(real["metrics"]) <= set(doc["metrics"])
        assert all(type(doc[k]) is type(real[k]) for k in CB_KEYS)
        acc = [v for k, v in doc["metrics"].items() if k in real["metrics"] and v is not None]
        assert acc and all(0.0 <= v <= 1.0 for v in acc)  # fractions, as CLIP_benchmark writes
    few = next(r for r in records if r["protocol"] == "few-shot" and r["method"] == "zeroshot")
    (doc,) = to_clip_benchmark(few)
    assert doc["metrics"]["acc1"] == few["acc1"] and doc["metrics"]["fewshot_k"] == few["shots"]
    assert doc["model"] == "synthetic" and doc["task"] == "zeroshot_classification"
    assert doc["pretrained"].startswith("none+zeroshot-") and doc["pretrained"].endswith(
        f"+k{few['shots']}"
    )
    b2n = next(r for r in records if r["protocol"] == "base-to-new")
    base, new = to_clip_benchmark(b2n)
    assert (base["dataset"], new["dataset"]) == ("syn/base", "syn/new")
    assert base["metrics"]["H"] == b2n["H"] and new["metrics"]["acc1"] == b2n["new"]
    dg = next(r for r in records if r["protocol"] == "domain-generalisation")
    assert [d["dataset"] for d in to_clip_benchmark(dg)] == ["syn", "tgt"]


def test_task_names_follow_the_configs_method() -> None:
    rec = {"protocol": "few-shot", "task": "t", "method": "linear_probe_adamw", "shots": 2,
           "seed": 1, "model_id": "m/w", "config": {"method": "linear_probe"},
           "acc1": 0.5}  # fmt: skip
    (doc,) = to_clip_benchmark(rec)
    assert doc["task"] == "linear_probe" and doc["method"] == "linear_probe_adamw"
    assert doc["pretrained"] == "w+linear_probe_adamw+k2" and doc["metrics"]["acc5"] is None


def test_split_model_id() -> None:
    assert split_model_id("ViT-B-16/openai") == ("ViT-B-16", "openai")
    assert split_model_id("aape-tiny/random-seed0") == ("aape-tiny", "random-seed0")
    assert split_model_id("local-dir/abc/def") == ("local-dir", "abc/def")
    assert split_model_id("") == ("unknown", "unknown")


@pytest.mark.slow
def test_clip_benchmark_build_aggregates_a_folder_of_our_results(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _runs(runs, "linear_probe")  # scikit-learn's first import alone takes seconds
    export = write_report(runs)["clip_benchmark"]
    assert export == runs / "report" / EXPORT_DIR
    folder = tmp_path / "results"
    folder.mkdir()
    for f in export.glob("*.json"):  # beside a result of CLIP_benchmark's own
        (folder / f.name).write_text(f.read_text())
    (folder / "cb.json").write_text((FIXTURES / "result_zeroshot_classification.json").read_text())
    out = tmp_path / "benchmark.csv"
    # The real package's CLI, `clip_benchmark build <folder> --output <csv>`.
    done = subprocess.run(
        [sys.executable, "-m", "clip_benchmark.cli", "build", str(folder), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = list(csv.DictReader(out.open()))
    assert len(table) == 12 + 1
    ours = [r for r in table if r["language"] == "en" and r.get("method")]
    assert len(ours) == 12
    records = load_records(runs)
    expected = {
        (d["dataset"], d["model"] + " " + d["pretrained"], str(d["metrics"]["seed"])): d
        for r in records
        for d in to_clip_benchmark(r)
    }
    assert len(expected) == 12  # (dataset, model_fullname, seed) names one evaluation
    for row in ours:
        doc = expected[(row["dataset"], row["model_fullname"], row["seed"])]
        assert float(row["acc1"]) == pytest.approx(doc["metrics"]["acc1"])
        assert row["task"] == doc["task"] and row["fewshot_k"] == str(doc["metrics"]["fewshot_k"])
    assert {r["task"] for r in ours} == {"zeroshot_classification", "linear_probe"}
    fullnames = {r["model_fullname"] for r in ours if r["dataset"] == "syn" and r["seed"] == "1"}
    # zeroshot and linear_probe at K = 1 and 2 (few-shot), + the transfer run's source row:
    # every (model_fullname, dataset, seed) is one evaluation, so CLIP_benchmark tables pivot
    assert len(fullnames) == 5
    theirs = next(r for r in table if r["model_fullname"] == "ViT-B-32 openai")
    assert float(theirs["acc1"]) == pytest.approx(0.8983) and theirs["dataset"] == "cifar10"
