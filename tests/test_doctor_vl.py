"""Damaged vision-language files on disk, through the CLI: `aape doctor` finds a damaged part of
the caption bank (and quarantines it without losing a readable row), a damaged captioning run
(`prefix.pt`) and a damaged retrieval artifact; the commands that read them fail with one line
naming the file and the fix, and change nothing."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from damage import DAMAGES, corrupt_row_group, write_row_groups
from test_cli_bank import run
from test_doctor import FIX, one_line_error
from test_store import files_of
from vl_fixtures import caption_csv

from aape.vl.bank import caption_store
from aape.vl.config import RetrievalConfig
from aape.vl.gen_config import GenConfig
from aape.vl.gen_run import RUN_FILE, read_run_file, save_run
from aape.vl.gen_train import GenResult
from aape.vl.inference import export_retrieval_artifact, load_retrieval_artifact
from aape.vl.model import RetrievalAAPE
from aape.vl.prefix import PrefixModel
from aape.vl.train import RetrievalResult
from prompt_banks.atomic import part_name
from prompt_banks.clip import CLIPRef


def _import(capsys, home: Path, tmp_path: Path, name: str) -> tuple[int, str, str]:
    """`aape vl import-captions` of a 4-image CSV (3 captions each) as dataset `name`."""
    csv = caption_csv(tmp_path / name, 4)
    return run(capsys, "vl", "import-captions", "--format", "csv", "--file", csv, "--name", name,
               "--home", home)  # fmt: skip


def _caption_parts(home: Path) -> list[Path]:
    return sorted((home / "banks" / "captions").glob("*.parquet"))


def test_a_damaged_caption_part_is_named_then_quarantined_and_salvaged(
    home: Path, tmp_path: Path, capsys
) -> None:
    parts: dict[str, Path] = {}
    for name in ("shop", "street", "park"):
        assert _import(capsys, home, tmp_path, name)[0] == 0
        (parts[name],) = set(_caption_parts(home)) - set(parts.values())
    # street: 12 rows in 4 row groups, the second damaged (3 rows lost, 9 readable).
    table = pq.read_table(parts["street"])
    parts["street"].unlink()
    parts["street"] = parts["street"].with_name(part_name())
    write_row_groups(table, parts["street"], 3)
    corrupt_row_group(parts["street"], 1)
    DAMAGES["truncated"](parts["park"])  # park: nothing readable

    before = files_of(home)
    code, _, err = _import(capsys, home, tmp_path, "garden")
    message = one_line_error(err)
    assert code == 2 and message.startswith(
        f"store: damaged part {parts['park']}: not a readable Parquet file"
    )
    assert message.endswith(FIX) and files_of(home) == before

    code, out, err = run(capsys, "doctor", "--home", home)
    assert code == 1 and "Traceback" not in err
    found = sorted(line for line in out.splitlines() if line.startswith("bank captions: "))
    assert len(found) == 2 and files_of(home) == before
    assert any(
        line.startswith(f"bank captions: {parts['street']}: row group 1 unreadable")
        for line in found
    )
    assert any(
        line.startswith(f"bank captions: {parts['park']}: not a readable Parquet file")
        for line in found
    )

    code, out, _ = run(capsys, "doctor", "--home", home, "--quarantine")
    assert code == 0 and "salvaged 9 of 12 rows into " in out
    (stamp,) = (home / "quarantine").iterdir()
    for name in ("street", "park"):
        assert not parts[name].exists()
        assert (stamp / "banks" / "captions" / parts[name].name).is_file()
    assert caption_store(home).datasets() == {"shop": 12, "street": 9}
    assert _import(capsys, home, tmp_path, "garden")[0] == 0
    assert run(capsys, "doctor", "--home", home)[0] == 0


@pytest.fixture
def caption_run(home: Path) -> Path:
    """A run folder as `aape vl caption-train` writes it (an untrained prefix: 16 -> 8 dims)."""
    cfg = GenConfig(aggregator_heads=4)
    folder = home / "runs" / "captioning" / f"shop-{cfg.tag()}"
    folder.mkdir(parents=True)
    result = GenResult(cfg, PrefixModel(16, 8, cfg), clip_dim=16, lm_dim=8)
    save_run(result, folder, CLIPRef("aape-tiny"), "shop")
    return folder


def _garbage(path: Path) -> None:
    path.write_bytes(b"\xab" * 600)


def _not_a_run(path: Path) -> None:
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, path)  # e.g. an image checkpoint


UNREADABLE = "not a readable checkpoint, damaged or cut short"
# damage -> how the one line starts after the file (a truncated zip reads as an OSError or a
# RuntimeError, depending on where the cut falls).
CHECKPOINT_DAMAGES = {
    "truncated": (DAMAGES["truncated"], f"{UNREADABLE} ("),
    "0 bytes": (DAMAGES["0 bytes"], f"{UNREADABLE} (EOFError)"),
    "garbage": (_garbage, f"{UNREADABLE} (UnpicklingError: Weights only load failed)"),
    "another file": (
        _not_a_run,
        "not a captioning run (no config, clip_model_id, clip_dim, lm_dim, state, train_dataset, "
        "summary)",
    ),
}


@pytest.mark.parametrize("damage", sorted(CHECKPOINT_DAMAGES))
def test_a_damaged_caption_run_is_one_line(caption_run: Path, capsys, damage: str) -> None:
    home, path = caption_run.parents[2], caption_run / RUN_FILE
    assert read_run_file(caption_run)["clip_dim"] == 16  # written whole, read back
    assert run(capsys, "doctor", "--home", home)[0] == 0
    apply, problem = CHECKPOINT_DAMAGES[damage]
    apply(path)
    fix = (
        f"train the run again with `aape vl caption-train --out {caption_run}` (its train.json "
        "names the dataset and config)"
    )
    code, _, err = run(capsys, "vl", "caption-eval", "--run", caption_run, "--dataset", "shop",
                       "--home", home)  # fmt: skip
    message = one_line_error(err)
    assert code == 2 and message.startswith(f"--run: {path}: {problem}") and message.endswith(fix)

    code, out, _ = run(capsys, "doctor", "--home", home)
    assert code == 1 and out.splitlines()[0] == f"caption run: {message.removeprefix('--run: ')}"
    assert run(capsys, "doctor", "--home", home, "--quarantine")[0] == 0
    (stamp,) = (home / "quarantine").iterdir()
    assert (stamp / path.relative_to(home)).is_file() and not path.exists()
    assert (caption_run / "train.json").is_file()  # the record of what to train again stays


@pytest.fixture
def retrieval_artifact(home: Path) -> Path:
    """The artifact `aape vl train` writes beside its checkpoint (an untrained h, d = 16)."""
    cfg = RetrievalConfig()
    folder = home / "runs" / "retrieval" / f"shop-{cfg.tag()}-s{cfg.seed}" / "artifact"
    clip = CLIPRef("aape-tiny")
    result = RetrievalResult(cfg, RetrievalAAPE(16, cfg), clip.model_id, 16, "shop")
    return export_retrieval_artifact(result, folder, clip_ref=clip)


@pytest.mark.parametrize("name", ["weights.safetensors", "config.json"])
def test_a_damaged_retrieval_artifact_is_one_line(
    retrieval_artifact: Path, tmp_path: Path, capsys, name: str
) -> None:
    home = retrieval_artifact.parents[3]
    assert load_retrieval_artifact(retrieval_artifact)[1]["dim"] == 16
    assert run(capsys, "doctor", "--home", home)[0] == 0
    if name == "config.json":
        _garbage(retrieval_artifact / name)
    else:
        DAMAGES["truncated"](retrieval_artifact / name)
    problem = (
        f"{retrieval_artifact / name} was changed after export (its sha256 is not the one in "
        "manifest.json); write it again with `aape vl train` (same --dataset, --set and --out) "
        "instead of editing it"
    )
    texts = tmp_path / "texts.txt"
    texts.write_text("a cat\n")
    code, _, err = run(capsys, "retrieve", "--artifact", retrieval_artifact, "--texts", texts,
                       "a.png")  # fmt: skip
    assert code == 2 and one_line_error(err) == f"--artifact: {problem}"

    code, out, _ = run(capsys, "doctor", "--home", home)
    assert (
        code == 1 and out.splitlines()[0] == f"retrieval artifact: {retrieval_artifact}: {problem}"
    )
    assert run(capsys, "doctor", "--home", home, "--quarantine")[0] == 0
    (stamp,) = (home / "quarantine").iterdir()
    assert (stamp / retrieval_artifact.relative_to(home) / name).is_file()
    assert not retrieval_artifact.exists()


def test_a_caption_part_whose_pages_are_damaged_is_named_too(
    home: Path, tmp_path: Path, capsys
) -> None:
    """The footer is sound, so only the read fails: the CLI finds the caption part behind it."""
    assert _import(capsys, home, tmp_path, "shop")[0] == 0
    (part,) = _caption_parts(home)
    write_row_groups(pq.read_table(part), part, 3)
    corrupt_row_group(part, 2)
    before = files_of(home)
    code, _, err = _import(capsys, home, tmp_path, "shop")  # a re-import reads its rows
    message = one_line_error(err)
    assert code == 2 and message.startswith(f"bank captions: damaged part {part}: row group 2")
    assert message.endswith(FIX) and files_of(home) == before
