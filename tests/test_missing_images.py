"""Missing or unreadable images fail a command in one line unless `--max-missing N` allows them;
asking for more shots than a class has fails unless `--shots-policy all-available`. Every run
records the images it used per split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_images import coop_split_dataset

from aape.cli.main import main
from aape.fewshot import require_shots, short_classes
from aape.report import write_report
from aape.tasks import prepare_task
from prompt_banks.errors import UserError

CLASSES = ["banded", "blotchy", "braided"]
SPLIT_FILE = "split_zhou_DescribableTextures.json"


def run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def dtd(tmp_path: Path) -> Path:
    """CoOp's DTD layout (3 train, 1 val, 2 test images per class), returns $DATA."""
    coop_split_dataset(tmp_path / "data", "dtd", "images", SPLIT_FILE, CLASSES)
    return tmp_path / "data"


def images(data: Path) -> Path:
    return data / "dtd" / "images"


@pytest.mark.slow
def test_missing_files_fail_in_one_line_and_store_nothing(dtd: Path, home: Path, capsys) -> None:
    gone = [images(dtd) / "banded" / "train_0.png", images(dtd) / "braided" / "test_1.png"]
    for path in gone:
        path.unlink()
    code, out, err = run(capsys, "features", "--dataset", "dtd", "--data-root", dtd, "--home", home)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0] == (
        f"error: images: 2 of 18 image files of dtd are missing or unreadable: {gone[0]}, "
        f"{gone[1]}; restore them (download or extract the dataset again under --data-root) or "
        "pass --max-missing 2 to run without them"
    )
    assert not (home / "features").exists()  # failed before encoding anything
    code, _, err = run(
        capsys, "features", "--dataset", "dtd", "--data-root", dtd, "--home", home,
        "--max-missing", 1,
    )  # fmt: skip
    assert code == 2 and "2 of 18 image files" in err and "(allowed: 1)" in err


def test_an_explicit_allowance_leaves_them_out_and_says_so(dtd: Path, home: Path, capsys) -> None:
    (images(dtd) / "banded" / "train_0.png").unlink()
    (images(dtd) / "blotchy" / "val_0.png").write_bytes(b"not an image")  # unreadable
    code, out, err = run(
        capsys, "features", "--dataset", "dtd", "--data-root", dtd, "--home", home,
        "--views", 0, "--max-missing", 2, "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == {"train": 8, "val": 2, "test": 6}
    assert report["missing_images"] == {"train": 1, "val": 1, "test": 0}
    assert report["max_missing"] == 2 and report["skipped_images"] == 2
    assert report["left_out"] == sorted(
        [str(images(dtd) / "banded" / "train_0.png"), str(images(dtd) / "blotchy" / "val_0.png")]
    )
    # The allowance is per command; absent files are found before anything is decoded.
    code, _, err = run(capsys, "features", "--dataset", "dtd", "--data-root", dtd, "--home", home)
    assert code == 2 and "images: 1 of 18 image files of dtd are missing" in err


def test_a_missing_pick_is_drawn_again_so_k_shots_stay_k(dtd: Path, home: Path, tiny_clip) -> None:
    first = prepare_task(
        dataset="dtd", data_root=str(dtd), home=home, clip=tiny_clip, bank_domain=None,
        shots=2, seed=1, n_views=0, progress=False,
    )  # fmt: skip
    assert first.task.provenance["images"] == {"train": 6, "val": 3, "test": 6}
    banded = first.manifest.image_ids[0]
    (images(dtd) / banded[0]).unlink()  # a picked image that was cached: still used
    again = prepare_task(
        dataset="dtd", data_root=str(dtd), home=home / "fresh", clip=tiny_clip,
        bank_domain=None, shots=2, seed=1, n_views=0, progress=False, max_missing=1,
    )  # fmt: skip
    picks = again.manifest.image_ids[0]
    assert len(picks) == 2 and banded[0] not in picks and banded[1] in picks
    assert again.task.train.n_images == 6
    assert again.task.provenance["missing_images"] == {"train": 1, "val": 0, "test": 0}
    cached = prepare_task(
        dataset="dtd", data_root=str(dtd), home=home, clip=tiny_clip, bank_domain=None,
        shots=2, seed=1, n_views=0, progress=False,
    )  # fmt: skip
    assert cached.manifest == first.manifest and cached.images.unusable == {}


def test_more_shots_than_a_class_has_is_an_error_naming_it() -> None:
    short = {2: 1, 0: 3}
    with pytest.raises(UserError) as info:
        require_shots(short, 4, "error", dataset="dtd", describe=lambda c: f"'{CLASSES[c]}'")
    assert str(info.value) == (
        "shots: 4 training images per class asked, but 2 classes have fewer in dtd "
        "('braided' has 1, 'banded' has 3); pass --shots 1 or fewer, or pass --shots-policy "
        "all-available to train on the images they have (the run records it)"
    )
    require_shots(short, 4, "all-available", dataset="dtd")
    with pytest.raises(UserError, match=r"1 class has fewer in dtd \(1 has 0\); pass --shots-"):
        require_shots({1: 0}, 2, "error", dataset="dtd")
    with pytest.raises(UserError, match="--shots-policy: 'some' is unknown"):
        require_shots(short, 4, "some", dataset="dtd")
    assert short_classes([], 1, 2) == {0: 0, 1: 0}


@pytest.mark.slow
def test_train_refuses_short_classes_unless_told_and_records_it(
    dtd: Path, home: Path, tmp_path: Path, capsys
) -> None:
    (images(dtd) / "blotchy" / "train_2.png").unlink()
    base = ("train", "--dataset", "dtd", "--data-root", dtd, "--home", home, "--quiet")
    probe = ("--set", "method=linear_probe", "--set", "probe_steps=5", "--shots", 3)
    code, _, err = run(capsys, *base, *probe, "--max-missing", 1)
    assert code == 2 and err.count("\n") == 1
    assert (
        "3 training images per class asked, but 1 class has fewer in dtd ('blotchy' (1) has 2"
        in err
    )
    out_dir = tmp_path / "run"
    code, _, err = run(
        capsys, *base, *probe, "--max-missing", 1, "--shots-policy", "all-available",
        "--out", out_dir,
    )  # fmt: skip
    assert code == 0, err
    data = json.loads((out_dir / "metrics.json").read_text())["data"]
    assert data["shots_policy"] == "all-available" and data["short_classes"] == {"1": 2}
    assert data["images"] == {"train": 8, "val": 3, "test": 6}
    assert data["missing_images"] == {"train": 1, "val": 0, "test": 0}
    # eval: the run records it and the report shows it
    runs = tmp_path / "runs"
    code, _, err = run(
        capsys, "eval", "--dataset", "dtd", "--data-root", dtd, "--home", home, "--quiet",
        "--set", "method=linear_probe", "--set", "probe_steps=5", "--shots", 3, "--seeds", 1,
        "--baselines", "", "--max-missing", 1, "--shots-policy", "all-available", "--out", runs,
    )  # fmt: skip
    assert code == 0, err
    (result,) = [json.loads(p.read_text()) for p in runs.rglob("result.json")]
    assert result["data"]["short_classes"] == {"1": 2} and result["data"]["images"]["train"] == 8
    report = Path(write_report(runs)["markdown"]).read_text()
    assert "| 3 (all-available, 1 short) |" in report
