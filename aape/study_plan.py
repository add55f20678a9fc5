"""The simulation study's plan: worlds, variants, experiments (what runs), and their tasks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from aape import simulation as sim
from aape.config import TrainConfig
from aape.data import ClassTexts

# -- what runs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def config(self, base: TrainConfig) -> TrainConfig:
        return base.model_copy(update=self.overrides)


VARIANTS = {
    v.key: v
    for v in (
        Variant("zeroshot", "zero-shot template", {"method": "zeroshot"}),
        Variant("cupl", "CuPL ensemble", {"method": "cupl"}),
        Variant(
            "linear_probe", "linear probe", {"method": "linear_probe", "probe_solver": "adamw"}
        ),
        Variant("aape_l0", "AAPE, lambda 0 (no distillation)", {"lambda_distill": 0.0}),
        Variant("aape", "AAPE (attention, lambda 5)", {}),
        Variant("aape_mlp", "AAPE, mlp aggregator", {"aggregator": "mlp"}),
        Variant("aape_mean", "AAPE, mean aggregator", {"aggregator": "mean"}),
        Variant("aape_random", "AAPE, random aggregator", {"aggregator": "random"}),
        Variant("aape_bank_mean", "AAPE, class_embed bank_mean", {"class_embed": "bank_mean"}),
        Variant("aape_both", "AAPE, class_embed both", {"class_embed": "both"}),
        Variant("aape_sgd", "AAPE, CoOp SGD recipe", {"recipe": "coop_sgd"}),
        Variant(
            "aape_l0_sgd",
            "AAPE lambda 0, CoOp SGD recipe",
            {"recipe": "coop_sgd", "lambda_distill": 0.0},
        ),
    )
}
TRAINED = {k for k in VARIANTS if k.startswith("aape")}


@dataclass(frozen=True)
class Experiment:
    name: str
    world: str  # normal | control | small-llm
    shots: tuple[int, ...]
    variants: tuple[str, ...]
    n_prompts: int | None = None  # keep only the first n prompts of each class


@dataclass(frozen=True)
class StudyPlan:
    sim_config: sim.SimConfig
    world_seed: int
    seeds: tuple[int, ...]
    experiments: tuple[Experiment, ...]
    base_config: TrainConfig
    max_shots: int
    ablation_shots: int  # ablations, recipes, control and scaling run at this K


def _experiments(ka: int, curve_shots: tuple[int, ...]) -> tuple[Experiment, ...]:
    """In priority order: jobs run experiment by experiment (longest first within one), so an
    interrupted study has the rows the claims need first."""
    return (
        Experiment(
            "curves", "normal", curve_shots, ("zeroshot", "cupl", "linear_probe", "aape_l0", "aape")
        ),
        Experiment("ablations", "normal", (ka,), ("aape_mlp", "aape_mean", "aape_random")),
        # lambda 0 with class_embed=template never lets the bank reach h or g (the reward trains
        # only the aggregator), so its accuracy is the same in every world: it runs once, in
        # "curves" (tests/test_study.py checks the invariance).
        Experiment("control", "control", (ka,), ("zeroshot", "cupl", "aape")),
        Experiment("prompts-5", "normal", (ka,), ("cupl", "aape"), n_prompts=5),
        Experiment("small-llm", "small-llm", (ka,), ("cupl", "aape")),
        Experiment("recipes", "normal", (ka,), ("aape_sgd", "aape_l0_sgd")),
        Experiment("class-embed", "normal", (ka,), ("aape_bank_mean", "aape_both")),
    )


def full_plan() -> StudyPlan:
    """AdamW (100 epochs) everywhere; the SGD recipe (CoOp epochs: 100 at 4 shots) at 4 shots,
    where its cost fits the budget (200 epochs at 16 shots would double the study)."""
    return StudyPlan(
        sim_config=sim.SimConfig(),
        world_seed=0,
        seeds=(1, 2, 3),
        experiments=_experiments(4, (1, 2, 4, 8, 16)),
        base_config=TrainConfig(recipe="adamw"),
        max_shots=16,
        ablation_shots=4,
    )


def quick_plan() -> StudyPlan:
    """The same code path on a tiny world with short training (tests, smoke runs)."""
    return StudyPlan(
        sim_config=sim.small_config(),
        world_seed=0,
        seeds=(1, 2),
        experiments=_experiments(1, (1, 4)),
        base_config=TrainConfig(recipe="adamw", epochs=8, probe_steps=30, aggregator_heads=4),
        max_shots=4,
        ablation_shots=1,
    )


# -- tasks ----------------------------------------------------------------------------------


def make_world(plan: StudyPlan, world: str) -> sim.SimWorld:
    if world == "small-llm":
        return sim.simulate(
            plan.sim_config, world="normal", seed=plan.world_seed, llm=sim.SMALL_LLM
        )
    return sim.simulate(plan.sim_config, world=world, seed=plan.world_seed)


def truncate_bank(texts: ClassTexts, n: int) -> ClassTexts:
    """Each class keeps its first n prompts (descriptions are i.i.d., so a random subset)."""
    assert texts.bank is not None and texts.bank_mask is not None
    return replace(texts, bank=texts.bank[:, :n].clone(), bank_mask=texts.bank_mask[:, :n].clone())
