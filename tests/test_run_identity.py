"""A run's identity holds everything that determines it: two banks, two CLIP models or two
configs never share a run folder, and a config given twice in one `aape eval` runs once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)
from test_store import emb_row

from aape import byof
from aape import simulation as sim
from aape.cli.main import main
from aape.config import TrainConfig
from aape.data import BankId, Task
from aape.protocols import RESULT_NAME, RunInputs, config_dir_name, inputs_of, unique_configs
from aape.synthetic import make_task
from prompt_banks.importers import import_file
from prompt_banks.paths import banks_dir
from prompt_banks.store import BankStore


@pytest.fixture(scope="module")
def world() -> Task:
    cfg = sim.small_config(d=16, n_classes=4, n_families=2, n_attributes=12, family_pool=4,
                           attrs_per_class=4, prompts_per_class=(3, 5), train_per_class=4,
                           test_per_class=3)  # fmt: skip
    return sim.simulate(cfg).task


def _bank(home: Path, domain: str, task: Task, texts: dict[str, list[str]], seed: int) -> None:
    """Import `texts` as `domain` and embed them (random unit vectors) for the task's model."""
    store = BankStore(banks_dir(home))
    f = home / f"{domain}.json"
    f.write_text(json.dumps(texts))
    import_file(store, f, domain=domain, fmt="cupl")
    flat = [t for ts in texts.values() for t in ts]
    dim = task.texts.dim
    store.append_embeddings(
        [emb_row(t, task.model_id, dim, 100 * seed + i) for i, t in enumerate(flat)]
    )


def _eval(home: Path, feats: Path, domain: str, *extra: str) -> int:
    argv = ["eval", "--features-dir", str(feats), "--bank-domain", domain, "--home", str(home)]
    return main([*argv, "--shots", "1", "--seeds", "1", "--quiet", *extra])


def _results(home: Path) -> dict[str, dict]:
    root = home / "runs" / "few-shot"
    return {
        str(p.parent.parent.relative_to(root)): json.loads(p.read_text())
        for p in sorted(root.rglob(RESULT_NAME))
    }


@pytest.mark.slow
def test_a_second_bank_domain_is_a_second_run_not_an_overwrite(
    world: Task, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, feats = tmp_path / "home", byof.write_task(world, tmp_path / "feats")
    home.mkdir()
    names = world.texts.names
    _bank(home, "bank-a", world, {n: [f"A {n} with stripes.", f"A {n}, small."] for n in names}, 1)
    _bank(home, "bank-b", world, {n: [f"A {n} in the snow."] for n in names}, 2)
    args = ("--set", "method=cupl", "--baselines", "zeroshot")
    assert _eval(home, feats, "bank-a", *args) == 0
    first = _results(home)
    assert sorted(k.split("/")[1].rsplit("-", 1)[0] for k in first) == ["cupl@bank-a", "zeroshot"]
    assert _eval(home, feats, "bank-b", *args) == 0
    both = _results(home)
    # cupl with bank-b is a new run beside the first, which is kept as it was; zeroshot does
    # not read the bank, so it is the same run (skipped).
    assert len(both) == 3 and all(both[k] == rec for k, rec in first.items())
    cupl = {rec["bank"]["domain"]: rec for rec in both.values() if rec["method"] == "cupl"}
    assert set(cupl) == {"bank-a", "bank-b"} and cupl["bank-a"]["acc1"] is not None
    # The same domain with other content (one more description per class) is a third bank.
    _bank(home, "bank-a", world, {n: [f"A {n} seen from above."] for n in names}, 3)
    assert _eval(home, feats, "bank-a", *args) == 0
    third = _results(home)
    assert len(third) == 4 and all(third[k] == rec for k, rec in both.items())
    fingerprints = {r["bank"]["fingerprint"] for r in third.values() if r["method"] == "cupl"}
    assert len(fingerprints) == 3
    # `aape train` without --out: one folder per bank too.
    capsys.readouterr()
    folders = set()
    for domain in ("bank-a", "bank-b"):
        argv = ["train", "--features-dir", str(feats), "--bank-domain", domain, "--home", str(home)]
        assert main([*argv, "--set", "method=cupl", "--shots", "1", "--quiet"]) == 0
        folders.add(capsys.readouterr().out.rsplit("run: ", 1)[1].strip())
    assert len(folders) == 2 and all(
        f"cupl@{d}-" in " ".join(folders) for d in ("bank-a", "bank-b")
    )


def test_a_config_given_twice_runs_once(
    world: Task, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feats = byof.write_task(world, tmp_path / "feats")
    home = tmp_path / "home"
    home.mkdir()
    _bank(home, "bank", world, {n: [f"A {n}."] for n in world.texts.names}, 1)
    args = ("--set", "method=cupl", "--baselines", "cupl,zeroshot,zeroshot")
    assert _eval(home, feats, "bank", *args) == 0
    out = capsys.readouterr().out
    assert out.count(" cupl k=1 seed=1") == 1 and out.count(" zeroshot k=1 seed=1") == 1
    assert len(_results(home)) == 2
    assert _eval(home, feats, "bank", "--baselines", "zeroshot,lp") == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --baselines: 'lp' is not one of zeroshot, cupl, linear_probe, linear_probe_adamw\n"
    )


def test_identity_parts() -> None:
    task = make_task(n_classes=3, dim=8, seed=1)
    cfg = TrainConfig(method="cupl")
    name = config_dir_name(cfg, inputs_of(task))
    assert name.startswith("cupl-")  # a bank not from a store: no domain in the name
    assert (
        config_dir_name(cfg.model_copy(update={"seed": 7, "device": "cpu"}), inputs_of(task))
        == name
    )
    other_bank = make_task(n_classes=3, dim=8, seed=2)  # other prompts, same everything else
    assert config_dir_name(cfg, inputs_of(other_bank)) != name
    stored = RunInputs("m/x", {"domain": "cars/v1 (CuPL)", "fingerprint": "f" * 32})
    assert config_dir_name(cfg, stored).startswith("cupl@cars_v1_CuPL_-")
    assert config_dir_name(cfg, RunInputs("m/y", stored.bank)) != config_dir_name(cfg, stored)
    task.texts.bank_id = BankId("d", "0" * 32)
    assert inputs_of(task).bank == {"domain": "d", "fingerprint": "0" * 32}
    zs = TrainConfig(method="zeroshot")
    assert unique_configs([zs, cfg, zs.model_copy(update={"seed": 3}), cfg]) == [zs, cfg]
