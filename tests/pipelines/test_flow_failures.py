"""Scheduled runs fail loudly: no LLM answering, or too many failed rows, ends a flow run Failed
with the reason in its state message (and build_domain stops before embedding)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from llm_stub import Fault, StubServer, StubState

from pipelines.build_domain import build_domain
from pipelines.generate import generate_descriptions
from pipelines.params import BuildDomainParams, GenerateParams
from prompt_banks.paths import banks_dir
from prompt_banks.store import BankStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def stub_spec(tiny_domain, tmp_path: Path, url: str) -> str:
    spec = yaml.safe_load(tiny_domain.spec.read_text())
    spec["llm"] = {
        "backend": "openai",
        "base_url": url,
        "model": "stub",
        "max_retries": 1,
        "backoff_s": 0.01,
        "samples_per_request": 2,
    }
    path = tmp_path / "stub-spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def statuses(home: Path) -> list[str]:
    with BankStore(banks_dir(home)).connect() as con:
        return [r[0] for r in con.execute("SELECT status FROM descriptions").fetchall()]


def failed_message(state: Any) -> str:
    assert state.is_failed(), state
    return state.message


def test_generate_fails_at_once_when_no_llm_answers(tiny_domain, home: Path, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = stub_spec(tiny_domain, tmp_path, f"http://127.0.0.1:{port}/v1")
    state = generate_descriptions(
        GenerateParams(spec=spec, home=str(home), progress=False), return_state=True
    )
    message = failed_message(state)
    assert message.startswith("Flow run encountered an exception: UserError: --base-url:")
    assert f"cannot reach http://127.0.0.1:{port}/v1 (connection refused)" in message
    assert statuses(home) == []


def test_generate_and_build_domain_fail_on_too_many_failed_rows(
    tiny_domain, home: Path, tmp_path: Path
) -> None:
    with StubServer(StubState(faults=[Fault("500", match="meshed", times=None)])) as stub:
        spec = stub_spec(tiny_domain, tmp_path, stub.url)
        state = generate_descriptions(
            GenerateParams(spec=spec, home=str(home), progress=False), return_state=True
        )
        message = failed_message(state)
        assert message.startswith("Flow run encountered an exception: TooManyFailed:")
        # 3 classes x 1 question x 2 samples; "meshed" fails: 2 of 6 rows.
        assert "tiny-textures: 2 of 6 rows failed (33%, more than max_failed_share 0.1)" in (
            message
        )
        assert '2 x HTTP 500: {"error": {"message": "injected 500"}}' in message
        assert "retry_failed=true" in message
        assert sorted(statuses(home)) == ["failed"] * 2 + ["ok"] * 4  # kept for a retry

        # build_domain with a fresh store: its generate stage fails, and so does the run,
        # before any embedding; a looser threshold lets the same run through that stage.
        params = BuildDomainParams(
            spec=spec,
            dataset="folder",
            data_root=str(tiny_domain.images),
            home=str(tmp_path / "home2"),
            train=False,
            n_views=1,
            shots=(2,),
            progress=False,
        )
        state = build_domain(params, return_state=True)
        assert "2 of 6 rows failed" in failed_message(state)
        with BankStore(banks_dir(tmp_path / "home2")).connect() as con:
            assert con.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 0
        loose = params.model_copy(update={"max_failed_share": 0.5, "home": str(tmp_path / "h3")})
        out = build_domain(loose)
    assert out["generate"]["failed"] == 2 and out["embed"]["written"] > 0
