"""Fine-tuning a prefix: starting from a saved run (`init_from`) and training on VQA pairs,
some images with captions (L_task + L_distill + L_reward) and some without (L_task alone),
with the real, frozen SmolLM2 (the session's `smollm2` fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from aape.vl.gen_config import GenConfig
from aape.vl.gen_report import markdown_report
from aape.vl.gen_run import FINE_TUNED, ZERO_SHOT, load_init, save_run
from aape.vl.gen_train import GenResult, TrainData, caption_data, train_prefix
from aape.vl.gen_vqa_train import answer_target
from aape.vl.prefix import PrefixModel
from prompt_banks.clip import CLIPRef
from prompt_banks.errors import UserError

TINY = CLIPRef("aape-tiny")


def test_answer_target_is_the_most_common_first_on_ties() -> None:
    assert answer_target(["2"] * 6 + ["two"] * 3 + ["3"]) == "2"
    assert answer_target(["net", "mesh", "mesh", "net"]) == "net"  # tie: given first
    assert answer_target(["yes"]) == "yes"


def _saved_run(folder: Path, cfg: GenConfig) -> Path:
    """A run folder as `caption-train` writes it, of an untrained prefix (d = 16, D = 8)."""
    result = GenResult(cfg, PrefixModel(16, 8, cfg), 16, 8, [{"step": 1, "task": 1.0}])
    save_run(result, folder, TINY, "x", vqa_trained=True)
    return folder


def test_init_from_checks_folder_clip_and_config(tmp_path: Path) -> None:
    cfg = GenConfig(aggregator_heads=4)
    run = _saved_run(tmp_path / "run", cfg)
    saved = load_init(cfg.model_copy(update={"init_from": str(run)}), TINY.model_id)
    assert saved is not None and saved["vqa_trained"]
    assert set(saved["state"]) == set(PrefixModel(16, 8, cfg).state_dict())
    with pytest.raises(UserError, match=r"init_from: .*prefix.pt does not exist"):
        load_init(cfg.model_copy(update={"init_from": str(tmp_path / "nope")}), TINY.model_id)
    with pytest.raises(UserError, match=r"init_from: .* has k=5, this config k=3; set k=5"):
        load_init(cfg.model_copy(update={"init_from": str(run), "k": 3}), TINY.model_id)
    limber = cfg.model_copy(update={"init_from": str(run), "method": "limber"})
    with pytest.raises(UserError, match="has method=aape, this config method=limber"):
        load_init(limber, TINY.model_id)
    with pytest.raises(UserError, match=r"init_from: .* trained with aape-tiny.*, not ViT-B-16"):
        load_init(cfg.model_copy(update={"init_from": str(run)}), "ViT-B-16/openai")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "prefix.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match=r"init_from: .*prefix.pt: not a readable checkpoint"):
        load_init(cfg.model_copy(update={"init_from": str(junk)}), TINY.model_id)


def test_empty_training_set_is_a_user_error() -> None:
    with pytest.raises(UserError, match="training data: no image"):
        TrainData(torch.zeros(0, 16), [], torch.zeros(0, 1, 16), torch.zeros(0, 1, dtype=bool))
    with pytest.raises(UserError, match="training data: no image"):
        TrainData(torch.zeros(1, 16), [[]], torch.zeros(1, 1, 16), torch.zeros(1, 1, dtype=bool))


@pytest.mark.slow
def test_fine_tune_on_vqa_pairs_from_a_caption_run(smollm2) -> None:
    """A caption-trained prefix, then VQA pairs: the start equals the saved weights (a step at
    lr 0 leaves them unchanged), the fine-tuning loss falls, and L_distill counts only the
    images with captions."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 64, generator=gen)
    bank = torch.nn.functional.normalize(torch.randn(4, 2, 64, generator=gen), dim=-1)
    cfg = GenConfig(steps=20, batch_size=4, adamw_lr=3e-3, device="cpu", aggregator_heads=4)
    caps = [["a cat."], ["a dog."], ["an owl."], ["a fox."]]
    source = train_prefix(
        smollm2, caption_data(x, caps, bank, torch.ones(4, 2, dtype=bool), cfg.caption_prompt),
        cfg, progress=False,
    )  # fmt: skip
    state = {k: v.clone() for k, v in source.model.state_dict().items()}
    answers = ["cat", "dog", "owl", "fox"]
    pairs = [[("Q: What is in the picture? A:", " " + a)] for a in answers]
    with_captions = torch.tensor([[True, True], [True, False], [False, False], [False, False]])
    data = TrainData(x, pairs, bank, with_captions)
    still = train_prefix(smollm2, data, cfg.model_copy(update={"steps": 1, "adamw_lr": 0.0}),
                         init=state, progress=False)  # fmt: skip
    assert all(torch.equal(v, state[k]) for k, v in still.model.state_dict().items())
    tuned = train_prefix(smollm2, data, cfg, init=state, progress=False)
    summary = tuned.summary()
    assert summary["task_loss_last"] < summary["task_loss_first"] / 2
    assert all(row["distill"] > 0 for row in tuned.history)  # 2 of 4 images have captions
    # Without any caption, L_task alone: L_distill and L_reward stay 0.
    none = TrainData(x, pairs, bank, torch.zeros(4, 2, dtype=bool))
    alone = train_prefix(smollm2, none, cfg.model_copy(update={"steps": 3}), progress=False)
    assert all(r["distill"] == 0 and r["reward"] == 0 for r in alone.history)


def _eval(method: str, protocol: str | None, accuracy: dict[int, float]) -> dict:
    by = {
        str(k): {"accuracy": a, "samples": [{"question": "Q?", "answer": "cat", "truth": "cat",
                                             "accuracy": 1.0}]}
        for k, a in accuracy.items()
    }  # fmt: skip
    vqa = {"by_shots": by} | ({"protocol": protocol} if protocol else {})
    return {"method": method, "train": {"steps": 3}, "vqa": vqa}


def test_report_columns_per_vqa_protocol() -> None:
    evals = [
        _eval("aape", ZERO_SHOT, {0: 10.0, 1: 20.0}),
        _eval("aape", FINE_TUNED, {0: 55.0}),
        _eval("limber", None, {0: 5.0}),  # written before protocols: trained on captions only
    ]
    lines = markdown_report(evals).splitlines()
    assert lines[0].endswith("| VQA 0-shot | VQA 1-shot | VQA fine-tuned 0-shot |")
    assert lines[2].endswith("| 10.0 | 20.0 | - |") and lines[2].startswith("| aape |")
    assert lines[3].startswith("| aape + VQA fine-tuning |") and lines[3].endswith(
        "| - | - | 55.0 |"
    )
    assert lines[4].endswith("| 5.0 | - | - |")
    assert "Sample answers, aape + VQA fine-tuning, 0-shot:" in lines
