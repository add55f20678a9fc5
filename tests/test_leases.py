"""Leases on a local folder and an fsspec URL, and two `bank generate` runs sharing a domain.

The concurrency tests use real processes against the stub server, which counts every request.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import fsspec
import pytest

from prompt_banks.backends import make_backend
from prompt_banks.generate import generate_bank, lease_root
from prompt_banks.generate_plan import ClassPlanner
from prompt_banks.leases import Leases
from prompt_banks.spec import parse_spec
from prompt_banks.store import BankStore
from tests.llm_stub import StubServer, StubState
from tests.test_generate import raw_row_count, rows, run, spec_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", "memory"])
def lease_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    return tmp_path / "leases" if request.param == "local" else f"memory://{uuid.uuid4().hex}"


def test_a_held_lease_is_busy_for_others_until_released(lease_dir: Path | str) -> None:
    a, b = Leases(lease_dir, ttl_s=30), Leases(lease_dir, ttl_s=30)
    assert a.take("class-1", "d/class 1") == 0
    assert b.take("class-1") is None and b.take("class-2") == 0
    assert a.newest("class-1").owner == a.owner and a.newest("class-1").state == "held"
    a.release("class-1")
    assert b.newest("class-1").state == "released"
    assert b.take("class-1") == 2  # generations only grow: held 0, released 1, held 2
    assert b.held == ["class-1", "class-2"]


def test_an_expired_lease_is_taken_over_and_its_holder_learns_it(lease_dir: Path | str) -> None:
    dead, alive = Leases(lease_dir, ttl_s=0.2), Leases(lease_dir, ttl_s=0.2)
    assert dead.take("c") == 0
    assert alive.take("c") is None
    time.sleep(0.25)  # `dead` never renews: what a run killed with -9 leaves behind
    assert alive.take("c") == 1
    assert dead.renew_due() == ["c"] and dead.held == []
    dead.release("c")  # lost: it does not touch the new holder's lease
    assert alive.newest("c").owner == alive.owner and alive.newest("c").state == "held"


def test_renewal_keeps_a_lease_past_its_ttl(lease_dir: Path | str) -> None:
    holder, other = Leases(lease_dir, ttl_s=0.3), Leases(lease_dir, ttl_s=0.3)
    holder.take("c")
    for _ in range(8):  # 0.8 s: past the ttl more than twice
        time.sleep(0.1)
        assert holder.renew_due() == []
        assert other.take("c") is None
    assert holder.newest("c").generation >= 2


def test_old_generations_are_pruned(tmp_path: Path) -> None:
    leases = Leases(tmp_path, ttl_s=0.01)
    for _ in range(5):
        leases.take("c")
        time.sleep(0.02)
        leases.renew_due()
        leases.release("c")
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["000000000014.json"]


def test_a_stale_listing_cannot_take_a_pruned_generation(tmp_path: Path) -> None:
    a, b = Leases(tmp_path, ttl_s=30), Leases(tmp_path, ttl_s=30)
    a.take("c")
    a.release("c")  # generation 1; 0 is pruned
    assert b.take("c") == 2  # 1 is pruned; 2 is live
    stale = Leases(tmp_path, ttl_s=30)
    # A run that listed when 0 was the newest creates 1 now (the name is free again)...
    assert stale._write("c", 1, "held", "") is False  # ...and sees 2 when it lists again
    assert stale.newest("c").owner == b.owner


def test_a_lease_of_an_ended_process_on_this_machine_holds_nothing(tmp_path: Path) -> None:
    code = f"from prompt_banks.leases import Leases; Leases({str(tmp_path)!r}, ttl_s=600).take('c')"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    assert Leases(tmp_path).newest("c").live(time.time())  # held for 10 minutes...
    assert Leases(tmp_path).take("c") == 1  # ...by a process that is gone
    elsewhere = Leases(tmp_path, ttl_s=600)
    elsewhere.owner = "another-host:1:0123abcd"  # a run on another machine: never known gone
    elsewhere.take("d")
    assert Leases(tmp_path).take("d") is None


def test_a_damaged_lease_file_holds_nothing(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "000000000003.json").write_text("{not json")
    assert Leases(tmp_path).take("c") == 4


def test_of_many_racing_takers_exactly_one_wins(lease_dir: Path | str) -> None:
    for name in (f"race-{i}" for i in range(20)):
        takers = [Leases(lease_dir, ttl_s=30) for _ in range(6)]
        start = threading.Barrier(len(takers))
        won: list[Leases] = []

        def take(
            leases: Leases,
            name: str = name,
            start: threading.Barrier = start,
            won: list[Leases] = won,
        ) -> None:
            start.wait()
            if leases.take(name) is not None:
                won.append(leases)

        threads = [threading.Thread(target=take, args=(t,)) for t in takers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, name


def test_a_class_leased_by_another_run_waits_for_it_but_another_model_does_not(
    tmp_path: Path,
) -> None:
    with StubServer() as stub:
        spec = parse_spec(spec_dict(stub.url, classes=("hole", "oil stain")))
        with make_backend(spec) as backend:
            planner = ClassPlanner(spec, spec.classes[0], backend.model_id, backend.key_params)
        blocker = Leases(lease_root(BankStore(tmp_path), spec.domain), ttl_s=0.8)
        assert blocker.take(planner.lease_name) == 0
        other_model = parse_spec(
            spec_dict(stub.url, classes=("hole", "oil stain"), llm={"model": "another"})
        )
        report = run(other_model, tmp_path)
        assert report.ok == 12 and report.leased_elsewhere == 0
        blocker.release(planner.lease_name)
        assert blocker.take(planner.lease_name) is not None  # a fresh 0.8 s
        start = time.monotonic()
        report = run(spec, tmp_path)  # "hole" waits until the blocker's lease expires
    assert report.failed == 0 and report.leased_elsewhere == 1
    assert time.monotonic() - start >= 0.5


def test_a_run_into_a_url_store_keeps_its_leases_there() -> None:
    root = f"memory://{uuid.uuid4().hex}/banks"
    with StubServer() as stub:
        spec = parse_spec(spec_dict(stub.url, classes=("hole", "oil stain")))
        report = run(spec, root)
    assert (report.ok, report.failed) == (12, 0)
    leases = Leases(lease_root(BankStore(root), spec.domain))
    listed = fsspec.filesystem("memory").ls(f"{root}/leases/stub-domain", detail=False)
    names = [p.rsplit("/", 1)[-1] for p in listed]
    assert len(names) == 2 and all(leases.newest(n).state == "released" for n in names)


CLASSES = tuple(f"defect {c}" for c in "abcdefghijkl")


@pytest.mark.slow  # two CLI processes: a few seconds
def test_two_runs_at_once_ask_every_row_once(tmp_path: Path) -> None:
    # Every answer waits until 4 requests are in flight: each run keeps at most 2 (concurrency),
    # so both runs are asking at the same time before anything comes back.
    state = StubState(hold_until=4)
    with StubServer(state) as stub:
        spec = tmp_path / "spec.yaml"
        spec.write_text(json.dumps(spec_dict(stub.url, classes=CLASSES, llm={"timeout_s": 60})))
        cmd = [sys.executable, "-m", "aape.cli.main", "bank", "generate", "--spec", str(spec),
               "--home", str(tmp_path / "home"), "--concurrency", "2", "--no-progress"]  # fmt: skip
        procs = [
            subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    asked = [(r.user, r.body["seed"]) for r in state.requests]
    # 12 classes x 2 questions, one request of n=3 each: 24 requests in all, none twice.
    assert len(asked) == len(set(asked)) == 24, outs
    calls = [int(re.search(r"(\d+) calls", out).group(1)) for out in outs]
    assert sum(calls) == 24 and min(calls) > 0, outs  # both runs did part of the work
    assert any("classes were leased by another run" in out for out in outs), outs
    got = rows(tmp_path / "home" / "banks")
    assert len(got) == 72 == raw_row_count(tmp_path / "home" / "banks")  # nothing stored twice
    assert {r[4] for r in got} == {"ok"}


KILLABLE = """
import json, sys
from prompt_banks.backends import make_backend
from prompt_banks.generate import generate_bank
from prompt_banks.spec import parse_spec
from prompt_banks.store import BankStore
spec = parse_spec(json.loads(sys.argv[1]))
with make_backend(spec) as backend:
    generate_bank(spec, BankStore(sys.argv[2]), backend, concurrency=2, progress=False,
                  lease_ttl_s=60.0)
"""


@pytest.mark.slow  # a subprocess and a kill: a few seconds
def test_leases_of_a_run_killed_with_sigkill_are_taken_over(tmp_path: Path) -> None:
    state = StubState(hold_until=10**6)  # answers nothing until released
    with StubServer(state) as stub:
        spec = spec_dict(stub.url, classes=CLASSES, llm={"timeout_s": 60})
        store = tmp_path / "banks"
        proc = subprocess.Popen([sys.executable, "-c", KILLABLE, json.dumps(spec), str(store)])
        try:
            while len(state.requests) < 2 and proc.poll() is None:
                time.sleep(0.01)
            assert proc.poll() is None, "the run ended before it could be killed"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
        state.release_hold()
        parsed = parse_spec(spec)
        root = lease_root(BankStore(store), parsed.domain)
        leases = Leases(root)
        held = [d.name for d in Path(root).iterdir()]
        assert len(held) == 4  # a window of 2 x concurrency classes, leased by the dead run
        assert all(leases.newest(n).state == "held" for n in held)
        with_leases = len(state.requests)
        start = time.monotonic()
        with make_backend(parsed) as backend:
            report = generate_bank(parsed, BankStore(store), backend, concurrency=2, progress=False)
        took = time.monotonic() - start
    # The dead run was on this machine: its leases are taken at once, not after their expiry.
    assert report.leased_elsewhere == 0 and took < 5
    assert (report.ok, report.failed) == (72, 0)
    assert len(state.requests) - with_leases == 24  # every row asked once after the kill
    assert all(leases.newest(n).state == "released" for n in held)
