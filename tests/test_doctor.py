"""Damaged stores through the CLI: every command names the bad part in one line and changes
nothing; `aape doctor` finds each damaged file and quarantines it without losing a good row."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from damage import DAMAGES, REASONS, corrupt_row_group, write_row_groups
from test_cli_bank import pets, run  # noqa: F401  (`pets` is a fixture, used by bank_home)
from test_store import desc_row, files_of

from aape.cli.main import main
from prompt_banks import schema
from prompt_banks.atomic import part_name
from prompt_banks.paths import banks_dir
from prompt_banks.queries import list_domains
from prompt_banks.store import BankStore, utc_now

FIX = "run `aape doctor --quarantine` on this home to move it aside (its readable rows are kept)"


@pytest.fixture
def bank_home(request: pytest.FixtureRequest) -> Path:
    """A home with a small imported and embedded domain 'pets' (test_cli_bank's fixture)."""
    return request.getfixturevalue("pets")


def one_line_error(err: str) -> str:
    """The one error line on stderr (where progress bars may sit before it), without "error: "."""
    lines = err.rstrip("\n").split("\n")
    assert "Traceback" not in err and lines[-1].startswith("error: "), err
    assert not any(line.startswith("error") for line in lines[:-1]), err
    return lines[-1].removeprefix("error: ")


def _part(home: Path, table: str) -> Path:
    return sorted((home / "banks" / table).glob("*.parquet"))[0]


def _store_commands(home: Path, tmp_path: Path) -> dict[str, list]:
    more = tmp_path / "more.json"
    more.write_text(json.dumps({"Sphynx": ["A cat without fur."]}))
    h = ["--home", home]
    return {
        "stats": ["bank", "stats", "--domain", "pets", *h],
        "import": ["bank", "import", more, "--domain", "pets", *h],
        "export": ["bank", "export", "--domain", "pets", tmp_path / "out.json", *h],
        "embed": ["bank", "embed", "--domain", "pets", "--clip-model", "aape-tiny", "--quiet", *h],
        "query": [
            "bank",
            "query",
            "--domain",
            "pets",
            "--class",
            "sphynx",
            "--text",
            "fur",
            "--clip-model",
            "aape-tiny",
            *h,
        ],
    }


@pytest.mark.parametrize(
    ("damage", "table"),
    # each damage once, the two tables in turn
    [(d, ("descriptions", "embeddings")[i % 2]) for i, d in enumerate(sorted(DAMAGES))],
)
def test_every_store_command_names_a_damaged_part(
    bank_home, capsys, tmp_path, damage, table
) -> None:
    part = _part(bank_home, table)
    DAMAGES[damage](part)
    before = files_of(bank_home)
    for name, argv in _store_commands(bank_home, tmp_path).items():
        code, _, err = run(capsys, *argv)
        message = one_line_error(err)
        assert code == 2, name
        assert message.startswith(f"store: damaged part {part}: {REASONS[damage]}"), name
        assert message.endswith(FIX), name
        assert files_of(bank_home) == before, name
    assert not (tmp_path / "out.json").exists()


def test_a_part_whose_pages_are_damaged_is_named_too(bank_home, capsys, tmp_path) -> None:
    """The footer is sound, so only the read fails: the CLI finds the part behind it."""
    store = BankStore(banks_dir(bank_home))
    table = pq.read_table(_part(bank_home, "descriptions"))
    part = Path(store.descriptions_dir) / part_name()
    write_row_groups(table, part, 2)
    corrupt_row_group(part, 1)
    before = files_of(bank_home)
    code, _, err = run(capsys, *_store_commands(bank_home, tmp_path)["stats"])
    message = one_line_error(err)
    assert code == 2 and message.startswith(f"bank descriptions: damaged part {part}: row group 1")
    assert files_of(bank_home) == before


def test_doctor_reports_then_quarantines_and_salvages(bank_home, capsys) -> None:
    store = BankStore(banks_dir(bank_home))
    domains = list_domains(store)
    # A part of 3 row groups, one of which is damaged: its 4 other rows must survive.
    rows = [{**desc_row(f"extra {i}", index=i), "created_at": utc_now()} for i in range(6)]
    salvageable = Path(store.descriptions_dir) / part_name()
    write_row_groups(pa.Table.from_pylist(rows, schema=schema.DESCRIPTIONS), salvageable, 2)
    corrupt_row_group(salvageable, 1)
    emb_part = _part(bank_home, "embeddings")
    DAMAGES["truncated"](emb_part)

    code, out, err = run(capsys, "doctor", "--home", bank_home)
    assert code == 1 and "Traceback" not in err
    lines = out.splitlines()
    assert lines[0].startswith(f"bank descriptions: {salvageable}: row group 1 unreadable")
    assert lines[1].startswith(f"bank embeddings: {emb_part}: not a readable Parquet file")
    assert lines[2] == f"checked 3 files under {bank_home}: 2 damaged, 2 left"
    assert salvageable.exists() and emb_part.exists()  # a check moves nothing

    code, out, _ = run(capsys, "doctor", "--home", bank_home, "--quarantine")
    assert code == 0
    (stamp,) = (bank_home / "quarantine").iterdir()
    assert (stamp / "banks" / "descriptions" / salvageable.name).is_file()
    assert (stamp / "banks" / "embeddings" / emb_part.name).is_file()
    assert not salvageable.exists() and not emb_part.exists()
    assert "salvaged 4 of 6 rows into " in out.splitlines()[0]
    assert out.splitlines()[-1].endswith(f"2 damaged, 2 quarantined under {stamp}, 0 left")
    with store.connect() as con:
        kept = {r[0] for r in con.execute("SELECT row_key FROM descriptions").fetchall()}
    assert {rows[i]["row_key"] for i in (0, 1, 4, 5)} <= kept
    assert list_domains(store) == {"pets": domains["pets"] + 4}
    code, out, _ = run(capsys, "doctor", "--home", bank_home, "--json")
    assert code == 0 and json.loads(out)["remaining"] == 0 and json.loads(out)["checked"] == 2
    assert run(capsys, "bank", "stats", "--domain", "pets", "--home", bank_home)[0] == 0


def test_doctor_on_a_url_home(capsys, tmp_path) -> None:
    home = f"memory://aape-test-{uuid.uuid4().hex}/home"
    store = BankStore(banks_dir(home))
    store.append_descriptions([desc_row("a cat", index=0)])
    store.append_descriptions([desc_row("a dog", index=1)])
    fs = fsspec.filesystem("memory")
    bad = sorted(fs.glob(f"{home}/banks/descriptions/*.parquet"))[1]
    with fs.open(bad, "wb") as f:
        f.write(b"PAR1 not really")
    code, _, err = run(capsys, "bank", "stats", "--domain", "pets", "--home", home)
    assert code == 2 and one_line_error(err).startswith(
        f"store: damaged part {fs.unstrip_protocol(bad)}: not a readable Parquet file"
    )
    code, out, _ = run(capsys, "doctor", "--home", home)
    assert code == 1 and out.startswith(f"bank descriptions: {fs.unstrip_protocol(bad)}: ")
    assert run(capsys, "doctor", "--home", home, "--quarantine")[0] == 0
    (moved,) = fs.glob(f"{home}/quarantine/*/banks/descriptions/*.parquet")
    assert moved.endswith(bad.rsplit("/", 1)[1]) and not fs.exists(bad)
    assert list_domains(store) == {"pets": 1}


def test_doctor_checks_manifests_runs_and_artifacts(bank_home, capsys) -> None:
    (bank_home / "fewshot" / "pets").mkdir(parents=True)
    (bank_home / "fewshot" / "pets" / "shots1-seed1.json").write_text('{"dataset": "pets"')
    run_dir = bank_home / "runs" / "few-shot" / "pets" / "aape-1234" / "k1-s1"
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text("[1, 2]")
    art = bank_home / "artifacts" / "pets"
    art.mkdir(parents=True)
    (art / "config.json").write_text("{}")
    code, out, _ = run(capsys, "doctor", "--home", bank_home)
    lines = out.splitlines()
    assert code == 1 and len(lines) == 4
    assert lines[0].startswith(
        f"few-shot manifest: {bank_home}/fewshot/pets/shots1-seed1.json: unreadable"
    )
    assert lines[1].startswith(f"run result: {run_dir}/result.json: unreadable (TypeError")
    assert lines[2].startswith(f"artifact: {art}: {art} has no config.json + weights.safetensors")
    assert run(capsys, "doctor", "--home", bank_home, "--quarantine")[0] == 0
    (stamp,) = (bank_home / "quarantine").iterdir()
    assert (stamp / "artifacts" / "pets" / "config.json").is_file() and not art.exists()
    assert (stamp / "runs" / "few-shot" / "pets" / "aape-1234" / "k1-s1" / "result.json").is_file()


def test_doctor_help_and_a_missing_home(capsys, tmp_path) -> None:
    with pytest.raises(SystemExit) as done:
        main(["doctor", "--help"])
    assert done.value.code == 0 and "examples:\n  aape doctor --home" in capsys.readouterr().out
    code, _, err = run(capsys, "doctor", "--home", tmp_path / "nowhere")
    assert code == 2 and one_line_error(err) == (
        f"--home: {tmp_path / 'nowhere'} does not exist; pass the home to check"
    )


def test_a_damaged_run_result_is_one_line_for_report(capsys, tmp_path) -> None:
    result = tmp_path / "runs" / "few-shot" / "pets" / "aape-1234" / "k1-s1" / "result.json"
    result.parent.mkdir(parents=True)
    result.write_text('{"complete": tr')
    code, _, err = run(capsys, "report", "--runs", tmp_path / "runs")
    assert code == 2 and one_line_error(err).startswith(f"runs: {result} is not valid JSON (")
    assert one_line_error(err).endswith(
        "run `aape doctor --quarantine` to move it aside (the run is then redone)"
    )
