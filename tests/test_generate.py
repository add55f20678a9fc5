"""Generation engine against a fault-injecting OpenAI-compatible stub on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from prompt_banks.backends import FatalLLMError, make_backend
from prompt_banks.errors import UserError
from prompt_banks.generate import generate_bank
from prompt_banks.spec import DomainSpec, parse_spec
from prompt_banks.store import BankStore
from tests.llm_stub import Fault, StubServer, StubState

CLASSES = ("red thread", "hole", "oil stain")


def spec_dict(url: str, classes: tuple[str, ...] = CLASSES, **overrides: Any) -> dict[str, Any]:
    llm = {
        "backend": "openai",
        "base_url": url,
        "timeout_s": 0.5,
        "max_retries": 3,
        "backoff_s": 0.01,
        "max_backoff_s": 2.0,
        "samples_per_request": 3,
        **overrides.pop("llm", {}),
    }
    return {
        "domain": "stub-domain",
        "classes": list(classes),
        "questions": ["Describe what a(n) {} looks like.", "A caption of an image of a(n) {}:"],
        "samples_per_question": 3,
        "max_extra_samples_per_question": 2,
        "llm": llm,
        **overrides,
    }


def run(spec: DomainSpec, root: Path, **kw: Any):
    with make_backend(spec) as backend:
        return generate_bank(
            spec,
            BankStore(root),
            backend,
            concurrency=kw.pop("concurrency", 4),
            progress=False,
            **kw,
        )


def rows(root: Path) -> list[tuple]:
    with BankStore(root).connect() as con:
        return con.execute(
            "SELECT row_key, class_name, question, sample_index, status, raw_text, clean_text, "
            "error FROM descriptions ORDER BY row_key"
        ).fetchall()


def raw_row_count(root: Path) -> int:
    with BankStore(root).connect() as con:
        return con.execute(
            f"SELECT count(*) FROM read_parquet('{root}/descriptions/*.parquet')"
        ).fetchone()[0]


@pytest.fixture
def stub():
    with StubServer() as s:
        yield s


def test_every_row_is_asked_once_and_rerun_costs_nothing(stub: StubServer, tmp_path: Path) -> None:
    spec = parse_spec(spec_dict(stub.url))
    report = run(spec, tmp_path)
    got = rows(tmp_path)
    assert report.ok == 18 and report.failed == 0 and len(got) == 18 == raw_row_count(tmp_path)
    assert {r[4] for r in got} == {"ok"}
    assert all(
        r[6].endswith(".") and "Extra words" not in r[6] for r in got
    )  # cut at first sentence
    assert {r[3] for r in got} == {0, 1, 2}
    before = len(stub.state.requests)
    again = run(spec, tmp_path)
    assert (again.calls, again.rows_written, len(stub.state.requests)) == (0, 0, before)


def test_added_classes_cost_exactly_their_calls(stub: StubServer, tmp_path: Path) -> None:
    run(parse_spec(spec_dict(stub.url, classes=CLASSES[:2])), tmp_path)
    first = len(stub.state.requests)
    run(parse_spec(spec_dict(stub.url)), tmp_path)
    new = stub.state.requests[first:]
    assert new and all("oil stain" in r.user for r in new)
    assert len(rows(tmp_path)) == 18


def test_server_ignoring_n_gets_separate_requests_and_the_same_rows(tmp_path: Path) -> None:
    results = {}
    for honour in (True, False):
        with StubServer(StubState(honour_n=honour)) as s:
            run(parse_spec(spec_dict(s.url)), tmp_path / str(honour))
            results[honour] = (
                [(r[0], r[6]) for r in rows(tmp_path / str(honour))],
                len(s.state.requests),
            )
    assert results[True][0] == results[False][0]
    assert results[True][1] == 6  # one request of n=3 per (class, question)
    assert results[False][1] == 6 + 6 * 2  # the n=3 request answered once, then two more each


@pytest.mark.parametrize(
    "fault",
    [
        Fault("500"),
        Fault("503"),
        Fault("empty_body"),
        Fault("malformed"),
        Fault("no_choices"),
        Fault("timeout", delay_s=1.0),
        Fault("429"),
    ],
    ids=lambda f: f.kind,
)
def test_transient_faults_are_retried(fault: Fault, tmp_path: Path) -> None:
    fault.match = "hole"
    with StubServer(StubState(faults=[fault])) as s:
        report = run(parse_spec(spec_dict(s.url)), tmp_path)
    assert (report.ok, report.failed) == (18, 0)
    assert report.calls == 6 + 1  # one retry


def test_slow_answers_within_the_timeout_are_kept(tmp_path: Path) -> None:
    with StubServer(StubState(faults=[Fault("slow", delay_s=0.2, times=None)])) as s:
        report = run(parse_spec(spec_dict(s.url, classes=CLASSES[:1])), tmp_path)
    assert (report.ok, report.failed, report.calls) == (6, 0, 2)


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    state = StubState(faults=[Fault("429", match="hole", retry_after="0.5")])
    with StubServer(state) as s:
        run(parse_spec(spec_dict(s.url, classes=("hole",))), tmp_path, concurrency=1)
    first_question = [r.at for r in state.requests if "looks like" in r.user]
    assert len(first_question) == 2
    assert first_question[1] - first_question[0] >= 0.45  # backoff alone would be ~0.01 s


def test_persistent_failures_are_stored_and_retry_failed_asks_only_them(tmp_path: Path) -> None:
    state = StubState(faults=[Fault("503", match="hole", times=None)])
    with StubServer(state) as s:
        spec = parse_spec(spec_dict(s.url))
        report = run(spec, tmp_path)
        assert (report.ok, report.failed) == (12, 6)
        failed = [r for r in rows(tmp_path) if r[4] == "failed"]
        assert {r[1] for r in failed} == {"hole"} and all("503" in r[7] for r in failed)
        assert report.calls == 6 + 2 * 3  # two hole requests, each tried 1 + max_retries times
        state.faults.clear()
        seen = len(state.requests)
        wider = parse_spec(spec_dict(s.url, classes=(*CLASSES, "new class")))
        retried = run(wider, tmp_path, retry_failed=True)
        assert all("hole" in r.user for r in state.requests[seen:])  # not the new class either
    assert (retried.ok, retried.failed) == (6, 0)
    assert [r[4] for r in rows(tmp_path)].count("ok") == 18


@pytest.mark.parametrize("code", ["401", "403", "404"])
def test_auth_and_model_errors_stop_the_run_at_once(
    code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-value")
    state = StubState(faults=[Fault(code, times=None)])
    with StubServer(state) as s:
        spec = parse_spec(spec_dict(s.url, classes=tuple(f"class {i}" for i in range(20))))
        with pytest.raises(FatalLLMError) as err:
            run(spec, tmp_path, concurrency=2)
    assert code in str(err.value) and "SECRET" not in str(err.value)
    assert len(state.requests) <= 4  # at most one more per worker, not 40 requests
    assert "SECRET" not in caplog.text
    assert not (tmp_path / "descriptions").exists() or all(r[4] == "ok" for r in rows(tmp_path))


def test_refusals_and_empty_answers_are_dropped_and_resampled(tmp_path: Path) -> None:
    faults = [Fault("refusal", match="oil stain"), Fault("empty_content", match="hole")]
    with StubServer(StubState(faults=faults)) as s:
        report = run(parse_spec(spec_dict(s.url)), tmp_path)
    got = rows(tmp_path)
    assert report.dropped == 6 and report.drop_reasons == {"refusal": 3, "empty answer": 3}
    for cls in CLASSES:
        assert sum(1 for r in got if r[1] == cls and r[4] == "ok") == 6  # topped up to target
    refused = [r for r in got if r[4] == "dropped" and r[1] == "oil stain"]
    assert all(r[5].startswith("I'm sorry") and r[7] == "refusal" for r in refused)  # raw text kept


def test_resampling_is_bounded_for_a_class_that_repeats_itself(tmp_path: Path) -> None:
    with StubServer(StubState(faults=[Fault("constant", match="hole", times=None)])) as s:
        report = run(parse_spec(spec_dict(s.url, classes=("hole",))), tmp_path)
    got = rows(tmp_path)
    assert len(got) == 2 * (3 + 2)  # samples + max_extra per question, then it stops
    assert [r[4] for r in got].count("ok") == 1 and report.drop_reasons == {
        "duplicate within the class": 9
    }


def test_structured_output_and_completions_endpoint(tmp_path: Path) -> None:
    for endpoint, structured in (("chat", True), ("completions", False)):
        state = StubState()
        with StubServer(state) as s:
            llm = {"endpoint": endpoint, "structured_output": structured}
            report = run(
                parse_spec(spec_dict(s.url, classes=("hole",), llm=llm)), tmp_path / endpoint
            )
        body = state.requests[0].body
        assert report.ok == 6
        assert ("response_format" in body) == structured and ("stop" in body) != structured
        assert ("prompt" in body) == (endpoint == "completions")


def test_structured_output_falls_back_to_the_format_a_server_accepts(tmp_path: Path) -> None:
    state = StubState(formats=("json_object",))
    with StubServer(state) as s:
        spec = parse_spec(spec_dict(s.url, classes=("hole",), llm={"structured_output": True}))
        report = run(spec, tmp_path, concurrency=1)
    kinds = [r.body["response_format"]["type"] for r in state.requests]
    assert report.ok == 6 and kinds == ["json_schema", "json_object", "json_object"]


KILLABLE = """
import json, sys
from prompt_banks.backends import make_backend
from prompt_banks.generate import generate_bank
from prompt_banks.spec import parse_spec
from prompt_banks.store import BankStore
spec = parse_spec(json.loads(sys.argv[1]))
with make_backend(spec) as backend:
    store = BankStore(sys.argv[2])
    generate_bank(spec, store, backend, concurrency=2, progress=False, flush_rows=1)
"""


@pytest.mark.slow  # a subprocess and three runs: a few seconds
def test_killed_run_resumes_to_the_rows_of_an_uninterrupted_run(tmp_path: Path) -> None:
    # Faults fire on every matching request, so both runs see the same answers whatever the
    # order requests arrive in (a seeded LLM is a pure function of its request too).
    faults = [
        Fault("constant", match="caption of an image of a defect c", times=None),
        Fault("refusal", match="defect e", times=None),
    ]
    state = StubState(honour_n=False, delay_s=0.02, faults=faults)
    with StubServer(state) as s:
        spec = spec_dict(s.url, classes=tuple(f"defect {c}" for c in "abcdef"))
        killed = tmp_path / "killed"
        proc = subprocess.Popen([sys.executable, "-c", KILLABLE, json.dumps(spec), str(killed)])
        try:
            while not list((killed / "descriptions").glob("*.parquet")) and proc.poll() is None:
                time.sleep(0.005)
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.kill()
        finally:
            proc.wait()
        partial = len(rows(killed))
        run(parse_spec(spec), tmp_path / "whole")
        run(parse_spec(spec), killed)
    whole = rows(tmp_path / "whole")
    assert 0 < partial < len(whole)
    assert rows(killed) == whole
    assert raw_row_count(killed) == len(whole)  # none stored twice


def test_cli_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from aape.cli import bank_generate

    parser = argparse.ArgumentParser()
    bank_generate.register(parser.add_subparsers())

    def main(argv: list[str]) -> int:  # as aape.cli.main, without importing every other area
        args = parser.parse_args(argv[1:])
        try:
            return args.func(args)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    with StubServer() as s:
        path = tmp_path / "spec.json.yaml"
        path.write_text(json.dumps(spec_dict("http://unused", classes=("hole",))))
        code = main(
            [
                "bank",
                "generate",
                "--spec",
                str(path),
                "--base-url",
                s.url,
                "--model",
                "m",
                "--home",
                str(tmp_path / "home"),
                "--no-progress",
            ]
        )
    out = capsys.readouterr().out
    assert code == 0 and "6 ok" in out
    assert main(["bank", "generate", "--spec", str(tmp_path / "missing.yaml")]) == 2
    assert "error: --spec:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("llm", "message"),
    [
        ({"backend": "openai"}, "llm.base_url"),
        ({"backend": "openai", "base_url": "http://127.0.0.1:9"}, "cannot reach"),
        ({"backend": "local", "model_path": "/nonexistent.gguf"}, "--model-path"),
        ({"backend": "local", "model": "gpt-5"}, "is not a local model"),
        ({"backend": "vllm", "model": "m"}, "vllm"),
    ],
)
def test_backend_setup_errors_are_user_errors(llm: dict, message: str) -> None:
    if llm["backend"] == "vllm" and importlib.util.find_spec("vllm"):
        pytest.skip("vLLM is installed here; the test is for machines without it")
    with pytest.raises(UserError, match=message):
        make_backend(parse_spec({"domain": "d", "classes": ["a"], "llm": llm}))
