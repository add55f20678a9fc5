"""Training grids: run specs, one run executed anywhere equals the serial protocol, a killed grid
resumes, the fan-out flows (threads, a local Ray cluster), the combined report and `aape grid`."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)
from fake_images import image_folder

from aape import grid, protocols
from aape.cli.main import main
from aape.config import TrainConfig
from aape.report import write_combined_report
from prompt_banks.clip import CLIPRef
from prompt_banks.errors import UserError

REPO = Path(__file__).resolve().parents[2]
FAST = TrainConfig(recipe="adamw", epochs=2, warmup_epochs=0, aggregator_heads=4, batch_size=8)
METHODS = [*protocols.with_lambda0(FAST), FAST.model_copy(update={"method": "zeroshot"})]
# What differs between two executions of one run: when, and how long it took.
VOLATILE = ("created_at", "train_seconds", "_path")


def stable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in VOLATILE}


@pytest.fixture
def embedded_home(tiny_domain, home: Path, tiny_clip) -> Path:
    """`home` with the tiny domain's bank imported and embedded by aape-tiny."""
    from prompt_banks.embed import embed_domain
    from prompt_banks.paths import banks_dir
    from prompt_banks.store import BankStore

    tiny_domain.import_bank(home)
    embed_domain(BankStore(banks_dir(home)), tiny_domain.domain, tiny_clip, progress=False)
    return home


def source_of(tiny_domain, home: Path, images: Path | None = None) -> grid.TaskSource:
    return grid.dataset_source(
        "folder",
        home=str(home),
        data_root=str(images or tiny_domain.images),
        clip=CLIPRef("aape-tiny"),
        bank_domain=tiny_domain.domain,
        n_views=1,
    )


def test_run_specs_are_small_ordered_and_deduplicated(tiny_domain, tmp_path: Path) -> None:
    source = source_of(tiny_domain, tmp_path)
    specs = grid.run_specs(
        "few-shot", source, [*METHODS, METHODS[0]], tmp_path, shots=[1, 2], seeds=[1, 2]
    )
    assert len(specs) == 2 * 2 * 3  # the repeated config is one run
    assert [(s.shots, s.seed) for s in specs[:4]] == [(1, 1), (1, 1), (1, 1), (1, 2)]
    assert all(s.config.seed == s.seed for s in specs)
    assert len({pickle.dumps(s) for s in specs}) == len(specs)
    assert len(pickle.dumps(specs[0])) < 4000  # a spec names its data, it does not carry it
    b2n = grid.run_specs("base-to-new", source, METHODS, tmp_path, shots=[1, 4], seeds=[1])
    assert {s.shots for s in b2n} == {4}
    with pytest.raises(UserError, match="protocol: 'zero-shot' is unknown"):
        grid.run_specs("zero-shot", source, METHODS, tmp_path)
    with pytest.raises(UserError, match="targets: protocol cross-dataset needs"):
        grid.run_specs("cross-dataset", source, METHODS, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["few-shot", "base-to-new"])
def test_executed_runs_equal_the_serial_protocol(
    protocol: str, tiny_domain, embedded_home: Path, tmp_path: Path
) -> None:
    source = source_of(tiny_domain, embedded_home)
    specs = grid.run_specs(protocol, source, METHODS, tmp_path / "grid", shots=[1, 2], seeds=[1])
    assert grid.prepare(specs, progress=False) > 0
    assert grid.prepare(specs, progress=False) == 0  # the workers will only read
    records = [grid.execute(s) for s in reversed(specs)]
    serial_root = tmp_path / "serial"
    if protocol == "few-shot":
        serial = protocols.few_shot(
            source.load, source.name, METHODS, serial_root, shots=[1, 2], seeds=[1], progress=False
        )
    else:
        serial = protocols.base_to_new(
            lambda s: source.load(2, s), source.name, METHODS, serial_root, shots=2, seeds=[1],
            progress=False,
        )  # fmt: skip
    assert len(serial) == len(records) == len(specs)
    fanned = result_files(tmp_path / "grid")
    assert fanned.keys() == result_files(serial_root).keys() and len(fanned) == len(specs)
    for rel, record in fanned.items():
        assert record == result_files(serial_root)[rel], rel

    def text(record: dict[str, Any]) -> str:
        return json.dumps(record, sort_keys=True)

    assert sorted(text(stable(r)) for r in records) == sorted(map(text, fanned.values()))


def result_files(root: Path) -> dict[Path, dict[str, Any]]:
    """Every run record under `root` by its path, without what differs between executions."""
    return {
        f.relative_to(root): stable(json.loads(f.read_text()))
        for f in root.rglob(protocols.RESULT_NAME)
    }


KILL_SCRIPT = """
import pickle, sys, torch
from aape import grid
torch.set_num_threads(1)
for spec in pickle.loads(open(sys.argv[1], "rb").read()):
    grid.execute(spec)
"""


@pytest.mark.slow
def test_a_killed_grid_resumes_where_it_stopped(
    tiny_domain, embedded_home: Path, tmp_path: Path
) -> None:
    source = source_of(tiny_domain, embedded_home)
    slow = FAST.model_copy(update={"epochs": 40})
    specs = grid.run_specs(
        "few-shot", source, [slow], tmp_path / "runs", shots=[2], seeds=[1, 2, 3]
    )
    grid.prepare(specs, progress=False)
    (tmp_path / "specs.pkl").write_bytes(pickle.dumps(specs))
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "specs.pkl")], env=env,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not list(runs.rglob(protocols.RESULT_NAME)) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9, mid-grid
    proc.wait()
    done = list(runs.rglob(protocols.RESULT_NAME))
    assert 1 <= len(done) < len(specs), "the grid was not killed mid-way"
    before = {r: r.read_bytes() for r in done}
    records = [grid.execute(s) for s in specs]  # the same grid again
    results = list(runs.rglob(protocols.RESULT_NAME))
    assert len(results) == len(specs)
    assert all(r.read_bytes() == b for r, b in before.items())  # completed runs: skipped
    assert [r["seed"] for r in records] == [1, 2, 3]
    assert all(json.loads(r.read_text())["complete"] for r in results)


def test_combined_report_has_per_dataset_rows_and_the_average(tmp_path: Path) -> None:
    def rec(task: str, seed: int, base: float, new: float) -> dict[str, Any]:
        h = 2 * base * new / (base + new)
        return {"protocol": "base-to-new", "task": task, "method": "aape", "shots": 16,
                "seed": seed, "health": {}, "class_names": [], "complete": True,
                "base": base, "new": new, "H": h}  # fmt: skip

    records = [rec("a", 1, 0.9, 0.5), rec("a", 2, 0.7, 0.5), rec("b", 1, 0.6, 0.9)]
    few = {"protocol": "few-shot", "method": "aape", "shots": 4, "health": {}, "complete": True}
    records += [{**few, "task": t, "seed": 1, "acc1": a, "acc5": 1.0,
                 "mean_per_class_recall": a} for t, a in (("a", 0.5), ("b", 0.7))]  # fmt: skip
    paths = write_combined_report(records, tmp_path / "report")
    md = paths["markdown"].read_text()
    # a: base 80, new 50; b: base 60, new 90 -> mean base 70, mean new 70, H 70 (not mean of H).
    assert "| a | aape | 16 | 2 | 80.00 ± 14.14 | 50.00 ± 0.00 |" in md
    assert "| Average | aape | 16 | 1 | 70.00 | 70.00 | 70.00 |" in md
    assert "| Average | aape | 4 | 1 | 60.00 | 100.00 | 60.00 |" in md
    assert paths["csv"].is_file() and paths["accuracy_vs_shots_Average"].is_file()


@pytest.mark.slow
def test_a_transfer_grid_equals_the_serial_protocol(
    tiny_domain, embedded_home: Path, second_folder: Path, tmp_path: Path
) -> None:
    """Cross-dataset runs fanned out as specs write what `protocols.transfer` writes (the
    `aape eval --protocol cross-dataset` path), run folder for run folder."""
    from aape.tasks import load_task
    from pipelines.params import GridParams

    params = GridParams.model_validate(
        {
            "home": str(embedded_home),
            "protocol": "cross-dataset",
            "datasets": [{"dataset": "folder", "domain": tiny_domain.domain,
                          "data_root": str(tiny_domain.images)}],
            "targets": [{"dataset": "folder", "domain": tiny_domain.domain,
                         "data_root": str(second_folder)}],
            "clip": {"model": "aape-tiny"}, "shots": [2], "seeds": [1], "n_views": 1,
            "config": FAST.model_dump(exclude_defaults=True), "baselines": ["zeroshot"],
            "progress": False,
        }
    )  # fmt: skip
    fanned = serial_records(params)
    assert len(fanned) == 3  # AAPE, its lambda = 0 twin, zero-shot
    source = source_of(tiny_domain, embedded_home)
    target = source_of(tiny_domain, embedded_home, second_folder)

    def load_target():
        return load_task(
            dataset="folder", home=str(embedded_home), clip=CLIPRef("aape-tiny"),
            bank_domain=tiny_domain.domain, shots=1, seed=0, data_root=str(second_folder),
            n_views=0, shots_policy="all-available",
        )  # fmt: skip

    cfgs = [*protocols.with_lambda0(FAST), FAST.model_copy(update={"method": "zeroshot"})]
    root = tmp_path / "serial"
    protocols.transfer(
        lambda s: source.load(2, s), source.name, {target.name: load_target}, cfgs, root,
        protocol="cross-dataset", shots=2, seeds=[1], progress=False,
    )  # fmt: skip
    serial = result_files(root)
    assert {p.relative_to(tiny_domain.domain) for p in fanned} == set(serial)
    for rel, record in serial.items():
        assert fanned[Path(tiny_domain.domain) / rel] == record, rel
    assert all(r["protocol"] == "cross-dataset" for r in serial.values())


def grid_file(tiny_domain, tmp_path: Path, home: Path, second: Path) -> Path:
    spec = {
        "home": str(home),
        "protocol": "base-to-new",
        "datasets": [
            {"dataset": "folder", "domain": tiny_domain.domain, "data_root": str(d)}
            for d in (tiny_domain.images, second)
        ],
        "clip": {"model": "aape-tiny"},
        "shots": [2],
        "seeds": [1, 2],
        "n_views": 1,
        "config": FAST.model_dump(exclude_defaults=True),
        "baselines": ["zeroshot"],
        "progress": False,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


@pytest.fixture
def second_folder(tiny_domain, tmp_path: Path) -> Path:
    """A second dataset on the tiny domain's classes (other images, other counts)."""
    classes = yaml.safe_load(tiny_domain.spec.read_text())["classes"]
    return image_folder(tmp_path / "second", classes, {"train": 3, "val": 1, "test": 3})


def serial_records(params: Any) -> dict[Path, dict[str, Any]]:
    """The reference: every run of the grid in this process, no Prefect, no fan-out."""
    from pipelines.evaluate import grid_specs

    specs = grid_specs(params)
    grid.prepare(specs, progress=False)
    for spec in specs:
        grid.execute(spec)
    return result_files(Path(params.home) / "runs")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_aape_grid_runs_two_datasets_and_writes_the_average(
    tiny_domain, embedded_home: Path, second_folder: Path, tmp_path: Path, capsys
) -> None:
    path = grid_file(tiny_domain, tmp_path, embedded_home, second_folder)
    out = tmp_path / "report"
    argv = ["grid", "--grid-file", str(path), "--workers", "2", "--pool", "threads"]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    md = (out / "report.md").read_text()
    tasks = {line.split(" | ")[0].strip("| ") for line in md.splitlines() if "| aape" in line}
    assert len(tasks) == 3 and "Average" in tasks  # two datasets + the Average row
    printed = capsys.readouterr().out
    assert "12 runs" in printed and str(out / "report.md") in printed
    # Again: every run is read back (same records), nothing trains.
    files = sorted((embedded_home / "runs").rglob(protocols.RESULT_NAME))
    stamps = [f.read_bytes() for f in files]
    assert main(argv) == 0
    assert [f.read_bytes() for f in files] == stamps and len(files) == 12


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_aape_grid_on_worker_processes(tiny_domain, embedded_home: Path, capsys) -> None:
    """The default local pool: spawned worker processes that report to this session's API."""
    argv = ["grid", "--datasets", "folder", "--bank-domains", tiny_domain.domain]
    argv += ["--data-root", str(tiny_domain.images), "--home", str(embedded_home)]
    argv += ["--shots", "1,2", "--seeds", "1", "--views", "1", "--baselines", "zeroshot,cupl"]
    argv += ["--no-lambda0", "--set", "epochs=1", "--set", "recipe=adamw", "--workers", "2"]
    assert main(argv) == 0
    assert "6 runs" in capsys.readouterr().out
    records = [json.loads(f.read_text()) for f in (embedded_home / "runs").rglob("result.json")]
    assert len(records) == 6 and all(r["complete"] for r in records)


def test_aape_grid_refuses_bad_input_before_prefect(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "grid.yaml"
    bad.write_text("datasets: []\n")
    assert main(["grid", "--grid-file", str(bad)]) == 2
    assert main(["grid", "--grid-file", str(tmp_path / "missing.yaml")]) == 2
    assert main(["grid", "--datasets", "folder,dtd", "--bank-domains", "a"]) == 2
    assert main(["grid"]) == 2
    bad.write_text("datasets: [{dataset: dtd, domain: dtd}]\nshotz: [1]\n")
    assert main(["grid", "--grid-file", str(bad)]) == 2
    argv = ["grid", "--datasets", "dtd", "--bank-domains", "dtd", "--baselines", "cupl,coop"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}: datasets" in err
    assert f"error: --grid-file: {tmp_path / 'missing.yaml'} does not exist" in err
    assert "error: --bank-domains: give one bank domain per dataset (2 datasets, 1 domain)" in err
    assert "error: grid: pass --grid-file FILE or --datasets A,B --bank-domains A,B" in err
    assert f"error: {bad}: shotz" in err
    assert "error: grid: baselines.1: Input should be 'zeroshot', 'cupl', 'linear_probe' or" in err
    one = ["grid", "--datasets", "dtd", "--bank-domains", "dtd"]
    assert main([*one, "--protocol", "cross-dataset"]) == 2
    assert main([*one, "--targets", "eurosat"]) == 2
    assert main([*one, "--targets", "eurosat,caltech101", "--target-bank-domains", "e"]) == 2
    assert main([*one, "--protocol", "cross-dataset", "--targets", "nope"]) == 2
    argv = [*one, "--protocol", "cross-dataset", "--targets", "eurosat", "--set"]
    assert main([*argv, "class_embed=bank_mean"]) == 2
    err = capsys.readouterr().err
    assert "error: grid: targets: protocol cross-dataset needs datasets to test on" in err
    assert "error: grid: targets: only the cross-dataset and domain-generalisation" in err
    assert (
        "error: --target-bank-domains: give one bank domain per target (2 targets, 1 domain)" in err
    )
    assert "error: grid: datasets: 'nope' is unknown" in err
    assert (
        "error: grid: targets: eurosat needs a domain (class_embed=bank_mean reads its bank)" in err
    )


def test_grid_baselines_are_the_cli_baselines() -> None:
    """A grid names its baselines as `aape eval --baselines` does, with the same fields."""
    from typing import get_args

    from aape.baselines import BASELINES
    from pipelines.evaluate import method_configs
    from pipelines.params import Baseline

    assert set(get_args(Baseline)) == set(BASELINES)
    cfgs = method_configs(FAST, ("linear_probe", "linear_probe_adamw"), lambda0=False)
    assert [(c.method, c.probe_solver) for c in cfgs[1:]] == [
        ("linear_probe", "lbfgs"),
        ("linear_probe", "adamw"),
    ]
    assert [c.tag() for c in cfgs[1:]] == ["linear_probe", "linear_probe_adamw"]


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_a_grid_on_a_local_ray_cluster_equals_the_serial_grid(
    tiny_domain, embedded_home: Path, second_folder: Path, tmp_path: Path, ray_cluster: str
) -> None:
    from pipelines.evaluate import evaluate_grid
    from pipelines.params import GridParams
    from pipelines.runner import make_task_runner

    params = GridParams.model_validate(
        yaml.safe_load(grid_file(tiny_domain, tmp_path, embedded_home, second_folder).read_text())
    )
    reference = serial_records(params)
    shutil.rmtree(embedded_home / "runs")  # the same folders, now written by the Ray workers
    result = evaluate_grid.with_options(task_runner=make_task_runner(ray_cluster))(params)
    assert len(result["runs"]) == 12
    fanned = result_files(embedded_home / "runs")
    assert len(fanned) == len(reference) == 12
    for rel, record in reference.items():
        assert fanned[rel] == record, rel
    assert "| Average | aape" in Path(result["report"]["markdown"]).read_text()


def test_the_grid_deployment_runs_this_flow_with_valid_parameters() -> None:
    from pipelines.evaluate import evaluate_grid, grid_specs
    from pipelines.params import GridParams

    spec = yaml.safe_load((REPO / "infra/prefect/prefect.yaml").read_text())
    (dep,) = [d for d in spec["deployments"] if d["name"] == "grid-textile-defects"]
    path, name = dep["entrypoint"].split(":")
    assert path == "pipelines/evaluate.py" and name == evaluate_grid.__name__
    params = GridParams(**dep["parameters"]["params"])
    assert len(grid_specs(params)) == 5 * 3 * 5  # shots x seeds x (AAPE, lambda 0, 3 baselines)
