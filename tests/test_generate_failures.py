"""`aape bank generate` when the LLM endpoint is not there or fails: fail fast, fail loudly.

The endpoints are real: a closed port on 127.0.0.1 (connection refused), a `.invalid` host name
(RFC 2606: never resolves), a socket that accepts and never answers, and the stub server with
500s for a share of the requests.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aape.cli.main import main
from prompt_banks.backends import FatalLLMError, make_backend
from prompt_banks.errors import UserError
from prompt_banks.spec import parse_spec
from prompt_banks.store import BankStore
from tests.llm_stub import Fault, StubServer, StubState
from tests.test_generate import rows, run, spec_dict

CLASSES = tuple(f"defect {c}" for c in "abcdefghij")


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def write_spec(tmp_path: Path, url: str, **overrides) -> Path:
    path = tmp_path / "spec.yaml"  # JSON is YAML
    path.write_text(json.dumps(spec_dict(url, **overrides)))
    return path


def generate(spec: Path, home: Path, *extra: str) -> int:
    return main(
        ["bank", "generate", "--spec", str(spec), "--home", str(home), "--no-progress", *extra]
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"http://127.0.0.1:{closed_port()}/v1", "connection refused"),
        ("http://llm-server.invalid:8080/v1", "host name not found"),
    ],
    ids=["refused", "dns"],
)
def test_nothing_answering_fails_fast_in_one_line(
    url: str,
    reason: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-value")
    spec = write_spec(tmp_path, url)
    start = time.monotonic()
    code = generate(spec, tmp_path / "home", "--model", "m")  # a named model: no /models at start
    took = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2 and took < 5, (code, took)  # today: ~25 s of retries, then exit 0
    assert err.count("\n") == 1 and err.startswith(f"error: --base-url: cannot reach {url}")
    assert f"({reason})" in err and "fix --base-url" in err and "SECRET" not in err
    assert not (tmp_path / "home").exists()  # nothing stored, not even failed rows


def test_a_server_that_never_answers_fails_after_the_short_timeout(
    silent_port: int, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{silent_port}/v1"
    spec = parse_spec(spec_dict(url, llm={"model": "m", "timeout_s": 0.5}))
    with pytest.raises(UserError, match=r"cannot reach .* \(no answer within 0.5 s\)"):
        run(spec, tmp_path)


def test_no_model_named_and_no_server_is_the_same_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(UserError, match=r"cannot reach .*\(connection refused\)"):
        make_backend(parse_spec(spec_dict(url)))


def test_credentials_in_the_url_never_reach_the_message(tmp_path: Path) -> None:
    url = f"http://user:SECRET@127.0.0.1:{closed_port()}/v1?key=SECRET"
    with pytest.raises(UserError) as err:
        run(parse_spec(spec_dict(url, llm={"model": "m"})), tmp_path)
    assert "SECRET" not in str(err.value) and "//127.0.0.1:" in str(err.value)


def test_preflight_stops_a_refused_key_but_not_a_server_without_a_models_route(
    tmp_path: Path,
) -> None:
    state = StubState(models_status=401)
    with StubServer(state) as stub:
        spec = parse_spec(spec_dict(stub.url, classes=CLASSES[:1], llm={"model": "m"}))
        with pytest.raises(FatalLLMError, match=r"refused the API key \(401\)"):
            run(spec, tmp_path / "a")
        assert state.requests == []  # not one completion asked
        state.models_status = 404  # some OpenAI-compatible servers have no /v1/models
        report = run(spec, tmp_path / "b")
    assert (report.ok, report.failed) == (6, 0)


def test_a_dead_replica_is_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    with StubServer() as stub, caplog.at_level(logging.WARNING):
        spec = parse_spec(spec_dict(f"{dead},{stub.url}", classes=CLASSES[:2]))
        report = run(spec, tmp_path)
    assert (report.ok, report.failed) == (12, 0)
    assert f"leaving out replicas that do not answer: {dead} (connection refused)" in caplog.text


def test_nothing_to_ask_needs_no_server(tmp_path: Path) -> None:
    with StubServer() as stub:
        run(parse_spec(spec_dict(stub.url, classes=CLASSES[:2])), tmp_path)
    gone = f"http://127.0.0.1:{closed_port()}/v1"
    same_model = {"model": "stub-model"}  # what the stub serves: the same row keys
    report = run(parse_spec(spec_dict(gone, classes=CLASSES[:2], llm=same_model)), tmp_path)
    assert (report.calls, report.rows_written) == (0, 0)


def test_failed_share_over_the_threshold_exits_1_and_keeps_the_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = StubState(faults=[Fault("500", times=None, share=0.5)])
    with StubServer(state) as stub:
        spec = write_spec(tmp_path, stub.url, classes=CLASSES)
        home = tmp_path / "home"
        assert generate(spec, home) == 1
        out, err = capsys.readouterr()
        stored = rows(home / "banks")
        failed = [r for r in stored if r[4] == "failed"]
        # 10 classes x 2 questions, one request of n=3 each; the 500s always hit the same bodies.
        distinct = {json.dumps(r.body, sort_keys=True): r for r in state.requests}
        hit = sum(Fault("500", share=0.5).picks(r) for r in distinct.values())
        assert len(distinct) == 20 and 0 < hit < 20 and len(failed) == 3 * hit
        share = len(failed) / len(stored)
        assert err == (
            f"error: stub-domain: {len(failed)} of 60 rows failed ({share:.0%}, more than "
            f"--max-failed-share 0.1): {len(failed)} x HTTP 500: "
            '{"error": {"message": "injected 500"}}; the rows are stored as failed, '
            f"`aape bank generate --spec {spec} --retry-failed` asks them again\n"
        )
        assert f"{len(failed)} failed" in out  # the summary line still comes first

        # The same run with a looser threshold succeeds; the failed rows wait for --retry-failed.
        assert generate(spec, tmp_path / "home2", "--max-failed-share", "0.9") == 0
        assert "--retry-failed` asks them again" in capsys.readouterr().out
        state.faults.clear()
        assert generate(spec, home, "--retry-failed") == 0
    assert [r[4] for r in rows(home / "banks")].count("ok") == 60


def test_max_failed_share_must_be_a_share(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        generate(tmp_path / "spec.yaml", tmp_path, "--max-failed-share", "1.5")
    assert exc.value.code == 2 and "expected a number from 0 to 1" in capsys.readouterr().err


def test_zero_threshold_fails_on_one_failed_row(tmp_path: Path) -> None:
    from prompt_banks.generate_report import GenerateReport, TooManyFailed, check_failed_share

    report = GenerateReport("d", ok=99)
    report.count({"status": "failed", "error": "HTTP 503: busy (gave up after 6 attempts)"})
    check_failed_share(report, 0.1, again="x")  # 1 % is under 10 %
    with pytest.raises(TooManyFailed, match=r"1 of 100 rows failed .*: 1 x HTTP 503: busy;"):
        check_failed_share(report, 0.0, again="x")
    assert TooManyFailed.exit_code == 1


@pytest.mark.skipif(not importlib.util.find_spec("llama_cpp"), reason="needs llama-cpp-python")
def test_local_model_file_that_does_not_load_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF but not really")
    spec = parse_spec({"domain": "d", "classes": ["a"], "llm": {"model_path": str(bad)}})
    with pytest.raises(UserError, match=r"--model-path: llama.cpp cannot load .*model.gguf"):
        make_backend(spec)


def test_unwritable_lease_folder_is_one_line(tmp_path: Path) -> None:
    from prompt_banks.generate import lease_root

    store = BankStore(tmp_path / "banks")
    leases = Path(lease_root(store, "stub-domain"))
    leases.parent.mkdir(parents=True)
    leases.write_text("a file where the lease folder goes")
    with StubServer() as stub:
        with pytest.raises(UserError, match=r"^leases: cannot write .*; pick a writable --home"):
            run(parse_spec(spec_dict(stub.url, classes=CLASSES[:1])), tmp_path / "banks")
        assert stub.state.requests == []
