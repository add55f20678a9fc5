"""The linear-probe baseline: CLIP's L-BFGS logistic regression with C swept on validation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from aape import simulation as sim
from aape.baselines import sweep_c
from aape.byof import select_shots
from aape.config import TrainConfig, load_config
from aape.data import FeatureSet
from aape.evaluate import evaluate
from aape.protocols import few_shot
from aape.synthetic import make_task
from aape.train import train
from prompt_banks.errors import UserError

GRID = (1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6)


def _rows(fs: FeatureSet, keep: torch.Tensor) -> FeatureSet:
    _, index = torch.unique(fs.image_index[keep], return_inverse=True)
    return FeatureSet(fs.x[keep], fs.labels[keep], index, fs.view[keep])


def test_sweep_tries_the_grid_then_bisects_around_the_best() -> None:
    def score(c: float) -> float:  # peaks at C = 10 ** 1.3
        return -((math.log10(c) - 1.3) ** 2)

    out = sweep_c(score, GRID, refine=4)
    tried = [c for c, _ in out["tried"]]
    assert tried[:7] == list(GRID) and len(tried) > 7
    assert abs(math.log10(out["C"]) - 1.3) < 0.15  # 4 halvings of a step of 2 decades
    assert sweep_c(score, GRID, refine=0)["C"] == 1e2
    # A plateau of equal scores: its middle C; nothing scored (NaN): the grid's middle.
    flat = sweep_c(lambda c: 1.0 if 1e-2 <= c <= 1e2 else 0.0, GRID, refine=0)
    assert flat["C"] == 1.0
    assert sweep_c(lambda c: float("nan"), GRID, refine=3)["C"] == 1.0


def test_probe_sweeps_c_on_the_validation_split_and_the_run_says_so(tmp_path: Path) -> None:
    world = sim.simulate(sim.small_config(), seed=0).task
    cfg = TrainConfig(method="linear_probe", probe_refine_steps=2)
    (rec,) = few_shot(lambda k, s: select_shots(world, k, s), "sim", [cfg], tmp_path,
                      shots=[8], seeds=[1], progress=False)  # fmt: skip
    probe = rec["probe"]
    assert probe["solver"] == "lbfgs" and probe["selected_on"] == "val"
    assert probe["grid"] == list(GRID) and len(probe["tried"]) == 7 + 2 * 2
    assert probe["C"] in [c for c, _ in probe["tried"]]
    best = max(s for _, s in probe["tried"])
    assert dict(map(tuple, probe["tried"]))[probe["C"]] == best
    assert rec["acc1"] > 3 / 12  # well above chance (1/12) on the test images


def test_probe_matches_scikit_learn_and_never_predicts_an_unseen_class() -> None:
    from sklearn.linear_model import LogisticRegression

    task = make_task(n_classes=3, dim=16, shots=4, views=2, n_test=20, seed=3)
    train_2 = task.train = _rows(task.train, task.train.labels != 2)  # class 2: no image
    cfg = TrainConfig(method="linear_probe", probe_c_grid=(1.0,), probe_refine_steps=0)
    result = train(task, cfg, progress=False)
    assert result.probe["selected_on"].startswith("4-fold cross-validation")
    x = F.normalize(task.test.x, dim=-1)
    ours = result.classifier.logits(x, task.texts).argmax(1)
    centre = train_2.view == 0
    ref = LogisticRegression(C=1.0, max_iter=1000, random_state=1).fit(
        F.normalize(train_2.x[centre], dim=-1).double().numpy(), train_2.labels[centre].numpy()
    )
    assert np.array_equal(ours.numpy(), ref.predict(x.double().numpy()))  # binary case
    assert (ours != 2).all()


def test_one_shot_without_validation_keeps_the_grid_middle() -> None:
    task = make_task(n_classes=4, dim=16, shots=1, views=2)
    result = train(task, TrainConfig(method="linear_probe"), progress=False)
    assert result.probe["selected_on"].startswith("none") and result.probe["C"] == 1.0
    assert 0.0 <= evaluate(result.classifier, task.test, task.texts)["acc1"] <= 1.0


def test_the_earlier_probe_is_one_switch_away() -> None:
    task = make_task(n_classes=4, dim=16, shots=2)
    cfg = TrainConfig(method="linear_probe", probe_solver="adamw", probe_steps=20)
    result = train(task, cfg, progress=False)
    assert result.probe is None and cfg.tag() == "linear_probe_adamw"
    assert TrainConfig(method="linear_probe").tag() == "linear_probe"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("probe_c_grid=[]", "config probe_c_grid: Tuple should have at least 1 item"),
        ("probe_c_grid=[0, 1]", "config probe_c_grid.0: Input should be greater than 0"),
        ("probe_solver=sgd", "config probe_solver: Input should be 'lbfgs' or 'adamw'"),
    ],
)
def test_bad_probe_settings_are_one_line_errors(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def test_one_training_class_is_a_one_line_error() -> None:
    task = make_task(n_classes=2, dim=8, shots=2)
    task.train = _rows(task.train, task.train.labels == 0)
    with pytest.raises(UserError, match="cover fewer than 2 classes; check the dataset and shots"):
        train(task, TrainConfig(method="linear_probe"), progress=False)
