"""Fast checks of the orchestration glue that need no Prefect API: task-runner choice, limit
names, spec resolution, CLI validation before Prefect starts."""

from __future__ import annotations

import pytest
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_ray import RayTaskRunner

from aape.cli.main import main
from pipelines.common import shards
from pipelines.generate import llm_limit_name
from pipelines.params import BuildDomainParams, resolve_spec
from pipelines.runner import RAY_ADDRESS_ENV, make_task_runner
from prompt_banks.errors import UserError
from prompt_banks.spec import LLMSettings


def test_threads_without_a_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    assert isinstance(make_task_runner(), ThreadPoolTaskRunner)


def test_ray_when_an_address_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RAY_ADDRESS_ENV, "127.0.0.1:6390")
    runner = make_task_runner()
    assert isinstance(runner, RayTaskRunner)
    assert runner.address == "127.0.0.1:6390"
    assert make_task_runner("ray://head:10001").address == "ray://head:10001"  # explicit wins


def test_shards_cover_every_item_once() -> None:
    assert shards(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert shards([], 3) == []


def test_llm_limit_names_are_per_endpoint_and_valid() -> None:
    a = llm_limit_name(LLMSettings(backend="openai", base_url="http://10.0.0.5:8000/v1"))
    b = llm_limit_name(LLMSettings(backend="openai", base_url="http://10.0.0.6:8000/v1"))
    assert a != b
    for name in (a, b, llm_limit_name(LLMSettings())):
        assert name.startswith("llm-") and not set(name) & set("/%&><")


def test_bundled_spec_by_name_and_missing_file() -> None:
    assert resolve_spec("dtd").domain == "dtd"
    with pytest.raises(UserError, match="--spec"):
        resolve_spec("no-such-spec.yaml")


def test_params_refuse_unknown_fields() -> None:
    with pytest.raises(ValueError, match="shotz"):
        BuildDomainParams.model_validate({"spec": "dtd", "dataset": "dtd", "shotz": [1]})


def test_cli_checks_spec_and_dataset_before_prefect(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build-domain", "--spec", "no-such.yaml", "--dataset", "folder"]) == 2
    assert main(["build-domain", "--spec", "dtd", "--dataset", "no-such-dataset"]) == 2
    err = capsys.readouterr().err
    assert "error: --spec" in err and "error: --dataset" in err


def test_fast_demo_spec_is_the_bundled_one_made_smaller(tmp_path) -> None:
    from pipelines.demo import demo_spec
    from prompt_banks.spec import bundled_spec_path, load_spec

    full = load_spec(bundled_spec_path("textile-defects"))
    assert load_spec(demo_spec(tmp_path, fast=False)) == full
    small = load_spec(demo_spec(tmp_path, fast=True))
    assert small.domain == full.domain and small.classes == full.classes
    assert small.target_per_class == 2 < full.target_per_class
