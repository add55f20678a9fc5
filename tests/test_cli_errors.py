"""The error contract, walked over the whole CLI.

Every subcommand `build_parser()` knows must have at least one hostile case here, so a command
added later without one fails `test_every_command_has_error_cases`. Each case must end with a
non-zero exit, one `error:` line (argparse's own usage line may precede it), no traceback, and
the home exactly as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aape.cli.main import build_parser, main


def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from leaf_commands(sub, (*prefix, name))
            return
    yield " ".join(prefix)


def snapshot(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A real small or read-only file system at `where` (root, as in CI); skipped elsewhere."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def ctx(tmp_path: Path) -> dict[str, Path]:
    """Files the cases point at: a file where a folder is expected, a non-JSON bank, a
    non-UTF-8 spec, a simulated feature folder to train on."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    not_json = tmp_path / "bank.json"
    not_json.write_text("{not json")
    bad_spec = tmp_path / "spec.yaml"
    bad_spec.write_bytes(b"domain: caf\xe9\nclasses: [a, b]\n")
    sim = tmp_path / "sim"
    assert main(["simulate", "--out", str(sim), "--small", "--seed", "1"]) == 0
    return {
        "home": tmp_path / "home",
        "a_file": a_file,
        "not_json": not_json,
        "bad_spec": bad_spec,
        "sim": sim,
        "missing": tmp_path / "does-not-exist",
    }


Case = Callable[[dict[str, Path]], list[str]]


def _under_file(c: dict[str, Path]) -> str:
    return str(c["a_file"] / "sub")


def _vqa_files(c: dict[str, Path], kind: str) -> list[str]:
    """VQAv2 questions and annotations arguments, both the ctx file `kind`; images missing."""
    return [
        "--questions",
        str(c[kind]),
        "--annotations",
        str(c[kind]),
        "--images",
        str(c["missing"]),
    ]


# Commands that import Prefect run in a child process: Prefect binds its log handlers to the
# streams of the moment, which capsys closes after the test.
FLOW_COMMANDS = {"demo", "build-domain", "serve"}
NO_HOME = {
    "predict",
    "simulate",
    "study-banks",
    "retrieve",
    "vl simulate",
    "vl caption-report",
}  # without --home
CASES: dict[str, list[Case]] = {
    "bank import": [
        lambda c: ["bank", "import", str(c["missing"]), "--domain", "d"],
        lambda c: ["bank", "import", str(c["not_json"]), "--domain", "d"],
    ],
    "bank embed": [lambda c: ["bank", "embed", "--domain", "nothing-here"]],
    "bank stats": [lambda c: ["bank", "stats", "--domain", "nothing-here"]],
    "bank query": [lambda c: ["bank", "query", "--domain", "d", "--text", "x", "--top-k", "0"]],
    "bank export": [
        lambda c: ["bank", "export", "--domain", "nothing-here", "--format", "cupl", "o.json"]
    ],
    "bank generate": [
        lambda c: ["bank", "generate", "--spec", str(c["missing"])],
    ],
    "features": [lambda c: ["features", "--dataset", "no-such-dataset"]],
    "train": [
        lambda c: ["train", "--features-dir", str(c["missing"])],
        lambda c: ["train", "--features-dir", str(c["sim"]), "--out", _under_file(c)],
    ],
    "eval": [lambda c: ["eval", "--dataset", "no-such-dataset", "--shots", "1", "--seeds", "1"]],
    "report": [lambda c: ["report", "--runs", str(c["missing"])]],
    "grid": [
        lambda c: ["grid", "--grid-file", str(c["missing"])],
        lambda c: ["grid", "--grid-file", str(c["a_file"])],
        lambda c: ["grid", "--grid-file", str(c["not_json"])],
        lambda c: ["grid", "--datasets", "no-such-dataset", "--bank-domains", "d"],
    ],
    "export": [lambda c: ["export", "--run", str(c["missing"])]],
    "predict": [
        lambda c: ["predict", "--artifact", str(c["missing"]), "--classes", "a,b", "x.png"],
        lambda c: ["predict", "--artifact", str(c["missing"]), "--top-k", "0", "x.png"],
    ],
    "simulate": [lambda c: ["simulate", "--out", _under_file(c), "--small"]],
    "study": [lambda c: ["study", "--out", _under_file(c), "--quick"]],
    "study-banks": [lambda c: ["study-banks", "--out", _under_file(c)]],
    "bank report": [
        lambda c: ["bank", "report", "--features-dir", str(c["missing"])],
        lambda c: ["bank", "report", "--features-dir", str(c["sim"]), "--shots", "0"],
        lambda c: ["bank", "report", "--features-dir", str(c["sim"]), "--run", str(c["missing"])],
    ],
    "bank compare": [lambda c: ["bank", "compare", "--banks", "one", "--dataset", "x"]],
    "bank history": [lambda c: ["bank", "history", "--domain", "nothing-here"]],
    "bank diff": [
        lambda c: ["bank", "diff", "--domain", "d", "abc", "abcdef"],
        lambda c: ["bank", "diff", "--domain", "d", "abcdef01", "abcdef02"],
    ],
    "bank compact": [lambda c: ["bank", "compact", "--grace", "-1"]],
    "doctor": [lambda c: ["doctor", "--home", str(c["missing"])]],
    "vl import-captions": [
        lambda c: [
            "vl",
            "import-captions",
            "--format",
            "karpathy",
            "--file",
            str(c["missing"]),
            "--images",
            str(c["missing"]),
        ],
        lambda c: [
            "vl",
            "import-captions",
            "--format",
            "coco",
            "--file",
            str(c["not_json"]),
            "--images",
            str(c["home"].parent),
        ],
        lambda c: ["vl", "import-captions", "--format", "csv", "--file", str(c["a_file"])],
    ],
    "vl synthetic-captions": [lambda c: ["vl", "synthetic-captions", "--dataset", "nope"]],
    "vl embed": [lambda c: ["vl", "embed", "--dataset", "nothing-here"]],
    "vl train": [lambda c: ["vl", "train", "--dataset", "nothing-here"]],
    "vl eval": [lambda c: ["vl", "eval", "--dataset", "nothing-here"]],
    "vl simulate": [lambda c: ["vl", "simulate", "--out", str(c["missing"]), "--set", "tau=0"]],
    "retrieve": [
        lambda c: ["retrieve", "--artifact", str(c["missing"]), "--texts", str(c["missing"]), "x"],
        lambda c: ["retrieve", "--artifact", str(c["missing"]), "--texts", str(c["a_file"]), "x"],
    ],
    "demo": [lambda c: ["demo", "--home", _under_file(c)]],  # its own --home
    "build-domain": [lambda c: ["build-domain", "--spec", str(c["missing"]), "--dataset", "x"]],
    "serve": [lambda c: ["serve", "--spec", str(c["missing"]), "--dataset", "x"]],
    # captioning and VQA (aape/cli/vl_gen.py)
    "vl caption-train": [
        lambda c: ["vl", "caption-train", "--dataset", "nothing-here"],
        lambda c: ["vl", "caption-train", "--dataset", "x", "--set", "k=0"],
        lambda c: ["vl", "caption-train", "--dataset", "x", "--set", "h_mode=frozen"],
        lambda c: ["vl", "caption-train", "--dataset", "x", "--set", f"init_from={c['missing']}"],
    ],
    "vl vqa-train": [
        lambda c: ["vl", "vqa-train", *_vqa_files(c, "missing")],
        lambda c: ["vl", "vqa-train", *_vqa_files(c, "not_json")],
        lambda c: ["vl", "vqa-train", *_vqa_files(c, "missing"), "--set", "k=0"],
    ],
    "vl caption-eval": [
        lambda c: ["vl", "caption-eval", "--run", str(c["missing"])],
        lambda c: ["vl", "caption-eval", "--run", str(c["missing"]), "--questions", "q.json"],
        lambda c: ["vl", "caption-eval", "--run", str(c["missing"]), *_vqa_files(c, "not_json")],
    ],
    "vl caption-report": [
        lambda c: ["vl", "caption-report", "--runs", str(c["missing"])],
        lambda c: ["vl", "caption-report", "--runs", str(c["a_file"])],
    ],
    "vl synthetic-vqa": [lambda c: ["vl", "synthetic-vqa", "--dataset", "no-such-dataset"]],
}


def assert_one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str], home: Path) -> str:
    """Run `argv` (plus `--home home` where the command takes one) and check the contract."""
    takes_home = not {argv[0], " ".join(argv[:2])} & NO_HOME and "--home" not in argv
    full = [*argv, "--home", str(home)] if takes_home else argv
    before = snapshot(home)
    if argv[0] in FLOW_COMMANDS:  # Prefect's logging setup must not outlive capsys's streams
        done = subprocess.run(
            [sys.executable, "-m", "aape.cli.main", *full], capture_output=True, text=True
        )
        code, err = done.returncode, done.stderr.strip()
    else:
        try:
            code = main(full)
        except SystemExit as exc:  # argparse: usage line + one error line, exit 2
            code = exc.code
        err = capsys.readouterr().err.strip()
    # Progress bars redraw with \r; what is left of a line is its last state.
    shown = [ln.rsplit("\r", 1)[-1] for ln in err.splitlines()]
    lines = [ln for ln in shown if ln and not ln.startswith(("usage:", " ", "train "))]
    assert code not in (0, None), f"{argv}: exit {code}"
    assert "Traceback" not in err, err
    assert len(lines) == 1 and "error:" in lines[0], f"{argv}: {err!r}"
    assert snapshot(home) == before, f"{argv} changed the home"
    return lines[0]


def test_every_command_has_error_cases() -> None:
    missing = sorted(set(leaf_commands(build_parser())) - set(CASES))
    assert not missing, f"add hostile cases for {missing} to CASES"


@pytest.mark.parametrize(
    "command,index", [(cmd, i) for cmd, cases in CASES.items() for i in range(len(cases))]
)
def test_error_paths_are_one_line(command, index, ctx, capsys) -> None:
    assert_one_line_error(CASES[command][index](ctx), capsys, ctx["home"])


def test_non_utf8_spec_names_the_file(ctx, capsys) -> None:
    line = assert_one_line_error(
        ["bank", "generate", "--spec", str(ctx["bad_spec"])], capsys, ctx["home"]
    )
    assert str(ctx["bad_spec"]) in line and "UTF-8" in line


def test_read_only_out(ctx, capsys, tmp_path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        line = assert_one_line_error(
            ["train", "--features-dir", str(ctx["sim"]), "--out", str(ro / "run")],
            capsys,
            ctx["home"],
        )
    assert str(ro) in line and "writable" in line


def test_full_disk_while_writing_a_checkpoint(ctx, capsys, tmp_path) -> None:
    with tmpfs(tmp_path / "full", "size=12k") as full:
        out = full / "run"
        line = assert_one_line_error(
            ["train", "--features-dir", str(ctx["sim"]), "--out", str(out), "--shots", "2"],
            capsys,
            ctx["home"],
        )
        leftovers = [p.name for p in out.rglob("*")] if out.exists() else []
    assert "No space left on device" in line and "free disk space" in line
    assert not [n for n in leftovers if n.endswith(".tmp")], leftovers


def test_predict_treats_case_variants_as_one_class(tmp_path, capsys) -> None:
    from aape.inference import _check_distinct
    from prompt_banks.errors import UserError

    with pytest.raises(UserError, match="'Red Apple' and 'red apple' are one class"):
        _check_distinct(["red apple", "Red Apple"])
    _check_distinct(["red apple", "green apple"])


def test_os_error_line_is_one_line() -> None:
    from prompt_banks.errors import os_error_line

    line = os_error_line(OSError(28, "No space left\non device", "/x/y"))
    assert "\n" not in line and line.startswith("/x/y: ") and "free disk space" in line
    assert os_error_line(OSError("odd")).startswith("a file: odd;")


@pytest.mark.slow
def test_build_domain_with_no_llm_fails_without_a_traceback(tmp_path: Path) -> None:
    """A scheduled rebuild whose LLM is down: the Prefect runs end Failed, the command exits 2
    with its one `error:` line, and Prefect's log shows no traceback of the UserError."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "domain: tiny\nclasses: [cat, dog]\n"
        "llm: {backend: openai, base_url: 'http://127.0.0.1:9/v1', model: x}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "aape.cli.main", "build-domain", "--spec", str(spec),
         "--dataset", "animal-mnist", "--home", str(tmp_path / "home")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "Finished in state Failed" in done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [errors[0]] and "cannot reach http://127.0.0.1:9/v1" in errors[0]
