"""ImageNet end to end on aape-tiny, from CoOp's classnames.txt and from a WordNet-style list:
`aape features`, few-shot `aape train` and the domain-generalisation `aape eval`
(ImageNet -> V2, Sketch, A, R), with a CuPL-style bank keyed by display names.

Layouts: `imagenet_layouts` (the real 1000-line lists, images for 13 classes that hold every
name collision of both lists; the classes are the folders present)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from imagenet_layouts import CLASSES, coop_classnames, subset, wordnet_classnames, write_layout

from aape.cli.main import main
from prompt_banks.text import canonical_class_name

TARGETS = ("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")


def run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def cupl_bank(path: Path, lines: list[tuple[str, str]], shared_banks: Path) -> Path:
    """A CuPL-format file keyed by the list's display names, one key per bank name (as CuPL's
    ImageNet file: 998 keys for 1000 classes), with CuPL's real ImageNet sentences (3 each)."""
    cupl = json.loads((shared_banks / "cupl_base" / "imagenet_prompts_base.json").read_text())
    clip_name = dict(coop_classnames())
    names = dict(lines)
    bank: dict[str, list[str]] = {}
    seen: set[str] = set()
    for wnid in CLASSES:
        key = names[wnid]
        if canonical_class_name(key) not in seen:
            seen.add(canonical_class_name(key))
            bank[key] = cupl[clip_name[wnid]][:3]
    path.write_text(json.dumps(bank))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lines", "shared"),
    [
        (coop_classnames(), {"missile": 2, "sunglasses": 2}),
        (wordnet_classnames(), {"cardigan": 2, "crane": 2, "maillot": 2}),
    ],
    ids=["coop-classnames", "wordnet-list"],
)
def test_imagenet_features_train_and_domain_generalisation(
    tmp_path: Path,
    home: Path,
    capsys,
    caplog,
    shared_banks: Path,
    lines: list[tuple[str, str]],
    shared: dict[str, int],
) -> None:
    data = write_layout(tmp_path / "data", lines)
    bank = cupl_bank(tmp_path / "bank.json", lines, shared_banks)
    common = ("--home", home)
    assert run(capsys, "bank", "import", bank, "--domain", "imagenet", *common)[0] == 0
    embed = ("--domain", "imagenet", "--clip-model", "aape-tiny", "--quiet", *common)
    assert run(capsys, "bank", "embed", *embed)[0] == 0

    task = ("--dataset", "imagenet", "--data-root", data, *common)
    code, out, err = run(capsys, "features", *task, "--views", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == {"train": 26, "test": 13} and report["skipped_images"] == 0

    fit = ("--set", "epochs=2", "--set", "batch_size=8", "--quiet")
    out_dir = tmp_path / "run"
    code, out, err = run(
        capsys, "train", *task, "--bank-domain", "imagenet", "--shots", 1, "--out", out_dir, *fit
    )
    assert code == 0, err
    record = json.loads((out_dir / "metrics.json").read_text())
    names = dict(lines)
    assert record["class_names"] == [names[w] for w in sorted(CLASSES)]
    data_used = record["data"]
    assert data_used["class_keys"] == sorted(CLASSES)
    assert data_used["images"] == {"train": 13, "test": 13} and data_used["max_missing"] == 0
    assert data_used["shots_policy"] == "error" and data_used["short_classes"] == {}
    # a bank name that several classes bear reaches each of them; the run says which
    assert {n: len(keys) for n, keys in data_used["shared_prompts"].items()} == shared
    warning = [m for m in caplog.messages if "get the same prompts" in m]
    assert len(warning) == 1 and all(f"'{n}' <-" in warning[0] for n in shared)

    runs = tmp_path / "runs"
    code, out, err = run(
        capsys, "eval", *task, "--bank-domain", "imagenet", "--protocol",
        "domain-generalisation", "--targets", ",".join(TARGETS), "--shots", 1, "--seeds", 1,
        "--baselines", "zeroshot", "--no-lambda0", "--out", runs, *fit,
    )  # fmt: skip
    assert code == 0, err
    results = [json.loads(p.read_text()) for p in runs.rglob("result.json")]
    assert sorted(r["config"]["method"] for r in results) == ["aape", "zeroshot"]
    expected = {
        "imagenet-v2": 13,
        "imagenet-sketch": 13,
        "imagenet-a": len(set(CLASSES) & subset("a")),
        "imagenet-r": len(set(CLASSES) & subset("r")),
    }
    for rec in results:
        assert rec["data"]["images"] == {"train": 13, "test": 13}
        for target, n in expected.items():
            assert rec["targets"][target]["n_images"] == n, target
            assert rec["targets"][target]["data"]["images"] == {"test": n}
            assert 0.0 <= rec["targets"][target]["acc1"] <= 1.0
    report_md = (runs / "report" / "report.md").read_text()
    assert "acc1@imagenet-a" in report_md and "acc1@imagenet-r" in report_md
