"""The study, end to end on the quick plan (tiny world, short training)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from aape import study_claims, study_plan, study_runs
from aape.cli.main import main


def _paired_rows() -> list[study_runs.Row]:
    def row(variant: str, seed: int, base: float) -> study_runs.Row:
        return study_runs.Row(
            "curves",
            "normal",
            variant,
            "adamw",
            3,
            4,
            seed,
            "all",
            base,
            base,
            base,
            float("nan"),
            float("nan"),
            0.0,
        )

    return [
        row("aape", 1, 0.8),
        row("aape", 2, 0.7),
        row("aape_l0", 1, 0.75),
        row("aape_l0", 2, 0.72),
    ]


def test_paired_differences_match_by_seed() -> None:
    rows = _paired_rows()
    p = study_claims.paired(
        study_claims.rows_of(rows, "curves", "aape"),
        study_claims.rows_of(rows, "curves", "aape_l0"),
        "base",
    )
    assert p.n == 2 and p.wins == 1
    assert p.mean == pytest.approx(((0.8 - 0.75) + (0.7 - 0.72)) / 2)


@pytest.mark.slow
def test_lambda0_does_not_depend_on_the_descriptions() -> None:
    """The study runs AAPE lambda 0 once and compares every world against it: with
    class_embed=template the bank reaches only the aggregator, never h or g."""
    import torch

    from aape import simulation as sim
    from aape.byof import select_shots
    from aape.config import TrainConfig
    from aape.train import train

    cfg = TrainConfig(recipe="adamw", epochs=3, lambda_distill=0.0, aggregator_heads=4)
    logits = []
    for world in ("normal", "control"):
        task = select_shots(sim.simulate(sim.small_config(), world=world).task, 2, 1)
        clf = train(task, cfg, progress=False).classifier
        logits.append(clf.logits(task.test.x, task.texts))
    assert torch.equal(logits[0], logits[1])


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "study"
    assert main(["study", "--quick", "--out", str(out), "--quiet"]) == 0
    report = (tmp_path / "study.md").read_text(encoding="utf-8")
    assert f"aape study --out {out} --quick" in report
    for needle in (
        "## The paper's claims",
        "L_distill improves",
        "attention > MLP > mean > random",
        "## Control world",
        "teacher_acc",
    ):
        assert needle in report
    for png in ("curves.png", "ablations.png", "scaling.png"):
        assert (out / png).stat().st_size > 1000
    rows = list(csv.DictReader((out / "runs.csv").open(encoding="utf-8")))
    plan = study_plan.quick_plan()
    expected = sum(len(e.shots) * len(e.variants) for e in plan.experiments) * len(plan.seeds)
    assert len(rows) == expected
    assert {r["recipe"] for r in rows if r["variant"] == "aape_sgd"} == {"coop_sgd"}
    assert {r["recipe"] for r in rows if r["variant"] == "aape"} == {"adamw"}
    trained = [r for r in rows if r["variant"] == "aape"]
    assert all(r["teacher_acc"] not in ("", "nan") for r in trained)
    # A second run reuses every complete run.
    assert main(["study", "--quick", "--out", str(out), "--quiet"]) == 0
