"""Bank quality: margins, pruning, proxies and the report, against the simulation's truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_real_images import ANIMALS

from aape.bank_quality import (
    auc,
    description_margins,
    near_duplicates,
    prune_bank,
    quality,
    zero_training_proxies,
)
from aape.byof import select_shots
from aape.cli.main import main
from aape.data import ClassTexts, FeatureSet, Task
from aape.simulation import SMALL_LLM, SimConfig, simulate

# Big enough that the ground truth shows through the phrasing noise, small enough for seconds.
TRUTH_WORLD = SimConfig(n_classes=30, n_families=6, d=128)


def _hand_task() -> Task:
    """Two classes on orthogonal axes; class 0 has a description of class 1's look."""
    e = torch.eye(4)
    bank = torch.stack([torch.stack([e[0], e[1], e[0]]), torch.stack([e[1], e[1], e[1]])])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    x = torch.stack([e[0], e[0], e[1], e[1]])
    feats = FeatureSet(
        x=x,
        labels=torch.tensor([0, 0, 1, 1]),
        image_index=torch.arange(4),
        view=torch.zeros(4, dtype=torch.long),
        image_ids=[f"i{i}" for i in range(4)],
    )
    texts = ClassTexts(names=["zero", "one"], templates=e[:2], bank=bank, bank_mask=mask)
    return Task(name="hand", texts=texts, train=feats, val=feats, test=feats, model_id="m")


def test_margins_by_hand() -> None:
    task = _hand_task()
    m = description_margins(task.texts, task.train)
    # Class 0: its own axis (1 - 0) and class 1's axis (0 - 1); the padded slot is NaN.
    assert m.values(0).tolist() == [1.0, -1.0]
    assert torch.isnan(m.margin[0, 2])
    assert m.values(1).tolist() == [1.0, 1.0, 1.0]
    assert m.rival_class[0, 1].item() == 1


def test_prune_keeps_the_good_and_never_empties_a_class() -> None:
    task = _hand_task()
    pruned = prune_bank(task.texts, task.train, 0.0)
    assert pruned.bank_mask.sum(1).tolist() == [1, 3]
    assert torch.equal(pruned.bank[0, 0], torch.eye(4)[0])
    # A threshold above every margin keeps each class's best description.
    harsh = prune_bank(task.texts, task.train, 5.0)
    assert harsh.bank_mask.sum(1).tolist() == [1, 1]


def test_near_duplicates_and_proxies() -> None:
    task = _hand_task()
    assert near_duplicates(task.texts) == [0, 2]  # class 1 says the same thing three times
    px = zero_training_proxies(task)
    assert px["zeroshot_acc"] == 1.0 and px["split"] == "val"


def test_auc_matches_the_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=60).round(1), rng.random(60) < 0.4
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]]
    assert auc(s, y) == pytest.approx(np.mean(pairs))


def _truth(sim, margins) -> tuple[np.ndarray, np.ndarray]:
    """Descriptions that mention only true attributes of their class (positive) or only wrong
    ones (negative); margins centred on their class's median, so the ranking is within class."""
    scores, positive = [], []
    for c, said in enumerate(sim.truth.mentions):
        true = np.zeros(said.shape[1], dtype=bool)
        true[sim.truth.class_attributes[c]] = True
        n_true, n_wrong = (said & true).sum(1), (said & ~true).sum(1)
        v = margins.values(c).numpy()
        keep = ((n_true > 0) & (n_wrong == 0)) | ((n_true == 0) & (n_wrong > 0))
        scores.extend((v - np.median(v))[keep])
        positive.extend(((n_true > 0) & (n_wrong == 0))[keep])
    return np.array(scores), np.array(positive)


@pytest.mark.slow
def test_margin_ranks_true_descriptions_above_hallucinated() -> None:
    sim = simulate(TRUTH_WORLD, seed=0)
    task = select_shots(sim.task, 16, 1)
    scores, positive = _truth(sim, description_margins(task.texts, task.train))
    assert positive.sum() > 50 and (~positive).sum() > 50
    assert auc(scores, positive) > 0.7


@pytest.mark.slow
def test_small_llm_bank_scores_worse() -> None:
    normal = quality(select_shots(simulate(TRUTH_WORLD, seed=0).task, 16, 1))
    small = quality(select_shots(simulate(TRUTH_WORLD, seed=0, llm=SMALL_LLM).task, 16, 1))
    assert small["margin"]["negative_share"] > normal["margin"]["negative_share"] + 0.05
    assert small["margin"]["median"] < normal["margin"]["median"]


@pytest.mark.slow
def test_cli_report_and_compare_on_simulated_worlds(tmp_path: Path, capsys) -> None:
    for world, extra in (("normal", []), ("small", ["--small-llm"])):
        assert main(["simulate", "--out", str(tmp_path / world), "--small", *extra]) == 0
    home = tmp_path / "home"
    out = tmp_path / "report"
    code = main(
        ["bank", "report", "--features-dir", str(tmp_path / "normal"), "--shots", "4",
         "--home", str(home), "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_descriptions"] > 0 and (out / "margins.png").stat().st_size > 1000
    assert "| descriptions with a negative margin |" in (out / "report.md").read_text()
    capsys.readouterr()
    code = main(
        ["bank", "compare", "--features-dirs", f"{tmp_path / 'normal'},{tmp_path / 'small'}",
         "--shots", "2", "--home", str(home), "--out", str(tmp_path / "cmp"), "--quiet",
         "--set", "epochs=3"]
    )  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    assert "| normal |" in table and "| small |" in table and "cupl (test)" in table
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert set(data["accuracy"]) == {"normal", "small"}


def test_compare_needs_two_banks(capsys) -> None:
    assert main(["bank", "compare", "--banks", "one", "--dataset", "x"]) == 2
    assert capsys.readouterr().err.startswith("error: banks: compare needs two or more")


def test_pruned_training_scores_with_the_pruned_bank() -> None:
    from aape.config import TrainConfig
    from aape.train import train

    task = _hand_task()
    cfg = TrainConfig(method="cupl", prune_margin=0.0)
    result = train(task, cfg)
    assert cfg.tag() == "cupl-prune0"
    # Class 0 keeps only its own axis: its CuPL mean is e0, not the mean of e0 and e1.
    assert torch.allclose(result.bank_means[0], torch.eye(4)[0])
    x = torch.eye(4)[:1]
    pruned = result.classifier.logits(x, task.texts)
    plain = train(task, TrainConfig(method="cupl")).classifier.logits(x, task.texts)
    assert pruned[0, 0] == pytest.approx(100.0) and plain[0, 0] == pytest.approx(100 / 2**0.5)


def test_teacher_attention_is_read_from_a_run(tmp_path: Path) -> None:
    from aape.bank_report import teacher_attention
    from aape.config import TrainConfig
    from aape.simulation import small_config
    from aape.train import train
    from prompt_banks.errors import UserError

    task = select_shots(simulate(small_config(), seed=0).task, 4, 1)
    train(task, TrainConfig(epochs=2), checkpoint_dir=tmp_path / "run", progress=False)
    att = teacher_attention(tmp_path / "run", task, show=2)
    assert len(att["per_class"]) == len(task.texts.names)
    for row in att["per_class"]:
        assert 0.0 < row["entropy"] <= 1.0 + 1e-6
        assert row["top"][0]["weight"] >= row["top"][1]["weight"]
    with pytest.raises(UserError, match="other classes"):
        other = select_shots(simulate(small_config(), seed=1).task, 4, 1)
        other.texts.names[0] = "renamed"
        teacher_attention(tmp_path / "run", other)


@pytest.mark.slow
def test_cli_report_on_a_store_bank_and_image_files(tmp_path: Path, home: Path, capsys) -> None:
    """The store path: a bank imported and embedded with aape-tiny, image files on disk."""
    from fake_images import image_folder

    animals = {c: ANIMALS[c] for c in ("bear", "cat", "zebra")}
    root = image_folder(tmp_path / "images", list(animals), {"train": 4, "val": 1, "test": 2})
    bank_file = tmp_path / "animals.json"
    bank_file.write_text(json.dumps(animals))
    base = ["--home", str(home)]
    assert main(["bank", "import", str(bank_file), "--domain", "animals", *base]) == 0
    embed = ["bank", "embed", "--domain", "animals", "--clip-model", "aape-tiny", "--quiet"]
    assert main([*embed, *base]) == 0
    out = tmp_path / "report"
    code = main(
        ["bank", "report", "--dataset", "folder", "--data-root", str(root),
         "--bank-domain", "animals", "--shots", "4", "--out", str(out), "--quiet", *base]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert {r["class"] for r in report["per_class"]} == set(animals)
    bear = next(r for r in report["per_class"] if r["class"] == "bear")
    assert {bear["best"][0]["text"], bear["worst"][0]["text"]} == set(ANIMALS["bear"])
    assert report["hygiene"]["bear"]["ok"] == 2 and "truncated_share" in report["hygiene"]["bear"]
    assert "| bear | 2 |" in (out / "report.md").read_text()
