"""The training loop: learning, determinism, exact resume, baselines, health metrics, config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from aape.config import TrainConfig, load_config
from aape.evaluate import evaluate
from aape.losses import aape_loss
from aape.model import AAPE, class_embeddings
from aape.synthetic import make_task
from aape.train import load_checkpoint, shots_of, train
from aape.updates import Updates, make_optimizer, training_threads
from prompt_banks.errors import UserError

FAST = dict(recipe="adamw", epochs=6, warmup_epochs=0, batch_size=16, aggregator_heads=4)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_overfits_a_tiny_synthetic_set() -> None:
    task = make_task(n_classes=4, dim=32, shots=3, views=1, text_noise=6.0, seed=3)
    cfg = TrainConfig(
        recipe="adamw",
        epochs=100,
        warmup_epochs=0,
        batch_size=12,
        adamw_lr=1e-2,
        aggregator_heads=4,
    )
    result = train(task, cfg, progress=False)
    assert evaluate(result.classifier, task.train, task.texts)["acc1"] == 1.0
    assert result.history[-1]["task"] < 0.2 * result.history[0]["task"]


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    task = make_task(dim=32)
    a = train(task, TrainConfig(**FAST, seed=1), progress=False)
    b = train(task, TrainConfig(**FAST, seed=1), progress=False)
    c = train(task, TrainConfig(**FAST, seed=2), progress=False)
    assert _same_weights(a.model, b.model)
    assert a.history == b.history
    assert not _same_weights(a.model, c.model)


@pytest.mark.parametrize("recipe", ["adamw", "coop_sgd"])
def test_checkpoint_and_resume_equal_an_uninterrupted_run(tmp_path: Path, recipe: str) -> None:
    task = make_task(dim=32)
    cfg = TrainConfig(**{**FAST, "recipe": recipe, "warmup_epochs": 1, "aggregator": "random"})
    whole = train(task, cfg, progress=False)
    part = train(task, cfg, checkpoint_dir=tmp_path, until_epoch=3, progress=False)
    assert not part.complete and part.epochs_done == 3
    resumed = train(task, cfg, checkpoint_dir=tmp_path, progress=False)
    assert resumed.complete
    assert _same_weights(whole.model, resumed.model)
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in resumed.history]
    loaded = load_checkpoint(tmp_path)
    assert loaded.config == whole.config and loaded.config.epochs == 6
    torch.testing.assert_close(
        loaded.classifier.logits(task.test.x, task.texts),
        whole.classifier.logits(task.test.x, task.texts),
    )


def test_resume_refuses_another_config(tmp_path: Path) -> None:
    task = make_task(dim=32)
    train(task, TrainConfig(**FAST), checkpoint_dir=tmp_path, until_epoch=1, progress=False)
    with pytest.raises(UserError, match="another config"):
        train(
            task,
            TrainConfig(**{**FAST, "lambda_distill": 0.0}),
            checkpoint_dir=tmp_path,
            progress=False,
        )


def test_uninformative_prompts_teacher_does_not_beat_cupl() -> None:
    task = make_task(n_classes=8, dim=32, shots=8, views=2, prompt_signal=0.0, n_test=20, seed=5)
    cfg = TrainConfig(**{**FAST, "epochs": 30})
    health = train(task, cfg, progress=False).health
    assert health["teacher_acc"] <= health["cupl_acc"] + 0.15
    assert health["teacher_acc"] < 0.35  # chance is 1/8: no image prototype leaked into p_a


def test_health_metrics_and_training_beats_zero_shot() -> None:
    task = make_task(n_classes=8, dim=32, shots=8, views=2, text_noise=3.0, n_test=20, seed=7)
    result = train(task, TrainConfig(**{**FAST, "epochs": 40, "adamw_lr": 1e-2}), progress=False)
    h = result.health
    assert set(h) >= {"teacher_acc", "student_acc", "cupl_acc", "zeroshot_acc"}
    assert h["student_acc"] > 1 / 8 + 0.1  # the distillation reached h
    zs = train(task, TrainConfig(method="zeroshot"), progress=False)
    acc = evaluate(result.classifier, task.test, task.texts)["acc1"]
    assert acc > evaluate(zs.classifier, task.test, task.texts)["acc1"]


@pytest.mark.parametrize("method", ["zeroshot", "cupl", "linear_probe"])
def test_baselines_are_one_flag(method: str) -> None:
    task = make_task(dim=32)
    result = train(task, TrainConfig(method=method, probe_steps=30), progress=False)
    metrics = evaluate(result.classifier, task.test, task.texts)
    assert 0.0 <= metrics["acc1"] <= 1.0 and result.model is None


@pytest.mark.parametrize(
    "switch",
    [
        {"aggregator": "mlp"},
        {"aggregator": "mean"},
        {"image_query": False},
        {"aggregator_ffn": True, "aggregator_ln_affine": True},
        {"class_embed": "bank_mean"},
        {"class_embed": "both"},
        {"head_residual": False},
        {"lambda_distill": 0.0},
        {"distill_grad_to_aggregator": True},
    ],
)
def test_every_switch_trains(switch: dict) -> None:
    task = make_task(dim=32, n_classes=4, shots=2)
    result = train(task, TrainConfig(**{**FAST, "epochs": 2, **switch}), progress=False)
    assert len(result.history) == 2 and math.isfinite(result.history[-1]["loss"])


def test_epochs_follow_coop_by_shots() -> None:
    cfg = TrainConfig()
    assert [cfg.epochs_for(k) for k in (1, 2, 4, 8, 16, 32)] == [50, 100, 100, 200, 200, 200]
    assert TrainConfig(recipe="adamw").epochs_for(1) == 100
    assert cfg.epochs_for(16, "imagenet") == 50
    assert shots_of(make_task(shots=3, views=4).train) == 3


def test_config_file_overrides_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("recipe: adamw\nlambda_distill: 3\n")
    cfg = load_config(f, ["lambda_distill=0", "class_embed=bank_mean"])
    assert cfg.recipe == "adamw" and cfg.lambda_distill == 0 and cfg.class_embed == "bank_mean"
    with pytest.raises(UserError, match="lambda_dist"):
        load_config(None, ["lambda_dist=1"])
    with pytest.raises(UserError, match="aggregator"):
        load_config(None, ["aggregator=transformer"])


def test_task_without_bank_is_refused_for_aape() -> None:
    task = make_task(dim=16)
    task.texts.bank, task.texts.bank_mask = None, None
    with pytest.raises(UserError, match="prompt bank"):
        train(task, TrainConfig(), progress=False)


def test_pipelined_updates_equal_one_backward_through_the_summed_loss() -> None:
    """The teacher/student split (and its two-thread pipeline) is an execution detail: the
    weights equal, bit for bit, those of one optimizer on L_task + lambda L_distill + L_reward."""
    task = make_task(dim=32, n_classes=6, shots=4)
    cfg = TrainConfig(**{**FAST, "recipe": "coop_sgd"}).resolve(4)
    bank, mask = task.texts.bank, task.texts.bank_mask
    w = class_embeddings(task.texts, cfg.class_embed)
    x, y = F.normalize(task.train.x, dim=-1), task.train.labels
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, len(y), 16)]

    def fresh() -> AAPE:
        torch.manual_seed(0)
        return AAPE(32, cfg, bank, mask)

    models = {}
    for name, pipelined in (("lockstep", False), ("pipelined", True)):
        models[name] = fresh()
        updates = Updates(models[name], cfg, bank, mask, w, torch.Generator())
        with training_threads(pipelined) as pool:
            for _ in range(3):
                updates.epoch(batches, pool)
    reference = fresh()
    opt = make_optimizer(cfg, list(reference.parameters()))
    for _ in range(3):
        for xb, yb in batches:
            h = reference.h(xb)
            logits = reference.g.cosines(xb, h, reference.g.prepare(w)) / cfg.tau
            p_a = reference.aggregator(xb, bank, mask, yb)
            loss = aape_loss(
                logits, yb, xb, h, p_a, lambda_distill=5, reward_scale=2.5, grad_to_teacher=False
            ).total
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert _same_weights(models["lockstep"], reference)  # bitwise
    assert _same_weights(models["pipelined"], reference)


def test_two_cores_pipeline_the_run_and_change_no_weight() -> None:
    task = make_task(dim=32, n_classes=6, shots=4)
    cfg = TrainConfig(**{**FAST, "recipe": "coop_sgd", "warmup_epochs": 1})
    one = train(task, cfg, progress=False)  # one torch thread: teacher, then student
    torch.set_num_threads(2)  # the fixture restores it
    two = train(task, cfg, progress=False)  # pipelined: student on a second thread
    assert torch.get_num_threads() == 2
    assert _same_weights(one.model, two.model)
    assert one.history == two.history and one.health == two.health


@pytest.mark.parametrize("side", ["teacher", "student"])
def test_an_error_on_either_side_of_the_pipeline_is_raised_not_hung(
    side: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = make_task(dim=32, n_classes=6, shots=4)
    cfg = TrainConfig(**FAST).resolve(4)
    bank, mask = task.texts.bank, task.texts.bank_mask
    updates = Updates(
        AAPE(32, cfg, bank, mask), cfg, bank, mask, task.texts.templates, torch.Generator()
    )
    x, y = F.normalize(task.train.x, dim=-1), task.train.labels
    batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, len(y), 4)]
    calls = []
    real = getattr(Updates, side)

    def failing(self: Updates, *args: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError(f"{side} broke")
        return real(self, *args)

    monkeypatch.setattr(Updates, side, failing)
    with training_threads(True) as pool, pytest.raises(RuntimeError, match=f"{side} broke"):
        updates.epoch(batches, pool)
