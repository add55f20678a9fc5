"""The artifact's manifest and config through the CLI: an edited file is refused in one line,
a bad config is one line, and `metrics` holds the test metrics of the run it was exported from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)
from PIL import Image
from test_cli_bank import run
from test_doctor import one_line_error
from test_store import files_of

from aape.artifact import export_artifact
from aape.artifact_manifest import MANIFEST_NAME, write_manifest
from aape.byof import write_task
from aape.synthetic import make_task
from aape.train import load_checkpoint
from prompt_banks.schema import file_sha256

FAST = ["--set", "recipe=adamw", "--set", "epochs=2", "--quiet"]
REEXPORT = "export it again with `aape export` instead of editing it"


@pytest.fixture
def features(tmp_path: Path, tiny_clip) -> Path:
    task = make_task(dim=tiny_clip.dim, n_classes=3, name="byof")
    task.model_id = tiny_clip.model_id
    write_task(task, tmp_path / "feats")
    return tmp_path / "feats"


@pytest.fixture
def exported(tmp_path: Path, features: Path, capsys) -> tuple[Path, Path]:
    """(run folder of `aape train`, the artifact exported from it)."""
    run_dir, art = tmp_path / "run", tmp_path / "art"
    assert (
        run(capsys, "train", "--features-dir", features, "--shots", "4", "--out", run_dir, *FAST)[0]
        == 0
    )
    argv = ["export", "--run", run_dir, "--out", art, "--clip-model", "aape-tiny"]
    assert run(capsys, *argv)[0] == 0
    return run_dir, art


def _predict(capsys, art: Path, tmp_path: Path) -> tuple[int, str, str]:
    png = tmp_path / "x.png"
    Image.new("RGB", (64, 64), (10, 120, 30)).save(png)
    return run(capsys, "predict", "--artifact", art, "--classes", "cat,dog", png)


def test_export_writes_a_manifest_and_the_runs_metrics(exported, capsys, tmp_path) -> None:
    run_dir, art = exported
    manifest = json.loads((art / MANIFEST_NAME).read_text())
    assert manifest["sha256"] == {
        name: file_sha256(art / name) for name in ("config.json", "weights.safetensors")
    }
    saved = json.loads((run_dir / "metrics.json").read_text())
    metrics = json.loads((art / "config.json").read_text())["metrics"]
    assert metrics == {k: saved[k] for k in ("acc1", "acc5", "mean_per_class_recall")}
    assert 0 <= metrics["acc1"] <= 1
    assert _predict(capsys, art, tmp_path)[0] == 0


def test_metrics_of_an_eval_run_come_from_its_result_json(features, capsys, tmp_path) -> None:
    runs = tmp_path / "runs"
    argv = ["eval", "--features-dir", features, "--shots", "1", "--seeds", "1", "--baselines", "",
            "--no-lambda0", "--out", runs, *FAST]  # fmt: skip
    assert run(capsys, *argv)[0] == 0
    (checkpoint,) = runs.rglob("checkpoint.pt")
    result = json.loads((checkpoint.parent / "result.json").read_text())
    art = tmp_path / "art"
    assert run(capsys, "export", "--run", checkpoint.parent, "--out", art)[0] == 0
    metrics = json.loads((art / "config.json").read_text())["metrics"]
    assert metrics and metrics["acc1"] == result.get(
        "acc1", (result.get("metrics") or {}).get("acc1")
    )
    # The library fills them too when no metrics are passed.
    library = export_artifact(load_checkpoint(checkpoint), tmp_path / "art2")
    assert json.loads((library / "config.json").read_text())["metrics"] == metrics


def _edit_config(art: Path) -> None:
    cfg = json.loads((art / "config.json").read_text())
    cfg["config"]["tau"] = 0.5  # a switch that changes predictions
    (art / "config.json").write_text(json.dumps(cfg))


def _edit_weights(art: Path) -> None:
    data = bytearray((art / "weights.safetensors").read_bytes())
    data[-5] ^= 0x01  # one bit of one float
    (art / "weights.safetensors").write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_edit_config, "config.json was changed after export (its sha256 is not the one in "
                       f"manifest.json); {REEXPORT}"),
        (_edit_weights, "weights.safetensors was changed after export (its sha256 is not the one "
                        f"in manifest.json); {REEXPORT}"),
        (lambda art: (art / MANIFEST_NAME).unlink(), "has no manifest.json"),
    ],
)  # fmt: skip
def test_an_edited_artifact_is_refused(exported, capsys, tmp_path, edit, message) -> None:
    _, art = exported
    edit(art)
    before = files_of(art)
    code, _, err = _predict(capsys, art, tmp_path)
    assert code == 2 and one_line_error(err).startswith(f"--artifact: {art}")
    assert message in one_line_error(err) and files_of(art) == before


def _resigned(art: Path, config_text: str) -> None:
    """A config edited by hand and a manifest made to match it: the config checks still hold."""
    (art / "config.json").write_text(config_text)
    write_manifest(art, ["config.json", "weights.safetensors"])


def test_a_bad_config_is_one_line(exported, capsys, tmp_path) -> None:
    _, art = exported
    good = json.loads((art / "config.json").read_text())
    cases = [
        ('{"format": "aape-artifact/1", "dim": ', f"{art}/config.json is not valid JSON"),
        (json.dumps({**good, "dim": "64"}), "field dim is '64', not a positive integer"),
        (json.dumps({**good, "dim": 0}), "field dim is 0, not a positive integer"),
        (json.dumps({**good, "dim": 32}), "holds weights that do not fit its config.json (dim 32)"),
        (json.dumps({**good, "config": {"tau": "hot"}}), "field config is not a valid training"),
    ]
    for text, message in cases:
        _resigned(art, text)
        code, _, err = _predict(capsys, art, tmp_path)
        assert code == 2 and message in one_line_error(err), (message, err)


def test_a_bad_run_record_is_one_line(exported, capsys, tmp_path) -> None:
    run_dir, _ = exported
    (run_dir / "metrics.json").write_text("{not json")
    code, _, err = run(capsys, "export", "--run", run_dir, "--out", tmp_path / "again")
    assert code == 2 and one_line_error(err).startswith(
        f"--run: {run_dir}/metrics.json is not valid JSON"
    )
    assert not (tmp_path / "again").exists()
