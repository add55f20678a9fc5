"""A damaged training checkpoint (`checkpoint.pt`) is one line wherever it is read: resuming
`aape train`, `aape export`, `aape bank report`, and `aape doctor` finds and quarantines it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)
from damage import DAMAGES
from test_artifact_integrity import FAST, features  # noqa: F401  (`features` is a fixture)
from test_cli_bank import run
from test_doctor import one_line_error

from aape.torch_files import checkpoint_dict
from aape.train import CHECKPOINT_KEYS, CHECKPOINT_NAME, RESUME_FIX
from prompt_banks.errors import UserError

UNREADABLE = "not a readable checkpoint, damaged or cut short ("


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\x17" * 400)


CHECKPOINT_DAMAGES = {
    "truncated": DAMAGES["truncated"],
    "0 bytes": DAMAGES["0 bytes"],
    "garbage": _garbage,
}


@pytest.fixture
def trained(tmp_path: Path, features: Path, capsys) -> tuple[Path, list]:  # noqa: F811
    """(home, the `aape train` argv): one run under <home>/runs/train/byof."""
    home = tmp_path / "home"
    argv = ["train", "--features-dir", features, "--shots", "4", *FAST]
    argv += ["--out", home / "runs" / "train" / "byof", "--home", home]
    assert run(capsys, *argv)[0] == 0
    return home, argv


@pytest.mark.parametrize("damage", sorted(CHECKPOINT_DAMAGES))
def test_a_damaged_checkpoint_is_one_line_everywhere(trained, capsys, damage: str) -> None:
    home, argv = trained
    folder = home / "runs" / "train" / "byof"
    path = folder / CHECKPOINT_NAME
    before = path.read_bytes()
    CHECKPOINT_DAMAGES[damage](path)
    damaged = path.read_bytes()

    code, _, err = run(capsys, *argv)  # resumes from the checkpoint
    assert code == 2
    assert one_line_error(err).startswith(f"checkpoint: {path}: {UNREADABLE}")
    assert one_line_error(err).endswith(RESUME_FIX)
    code, _, err = run(capsys, "export", "--run", folder, "--out", home / "art")
    assert code == 2 and one_line_error(err).startswith(f"--run: {path}: {UNREADABLE}")
    assert one_line_error(err).endswith(f"train it again with `aape train --out {folder} --force`")
    assert path.read_bytes() == damaged and not (home / "art").exists()  # nothing changed

    code, out, _ = run(capsys, "doctor", "--home", home)
    assert code == 1 and out.splitlines()[0].startswith(
        f"training checkpoint: {path}: {UNREADABLE}"
    )
    assert run(capsys, "doctor", "--home", home, "--quarantine")[0] == 0
    (stamp,) = (home / "quarantine").iterdir()
    assert (stamp / path.relative_to(home)).read_bytes() == damaged and not path.exists()
    assert run(capsys, *argv)[0] == 0  # trains again from the start
    assert len(path.read_bytes()) == len(before)


def test_a_torch_file_of_another_kind_is_named(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(UserError) as err:
        checkpoint_dict(path, CHECKPOINT_KEYS, field="--run", fix="train it again")
    assert str(err.value) == (
        f"--run: {path}: not a checkpoint of this kind (no config, epoch, model); train it again"
    )
