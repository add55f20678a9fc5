"""Training configuration: every [decision] of the method page is a field, validated by pydantic.

A config is resolved against a task before training (`resolve`): the epoch count then no longer
depends on the number of shots, and the resolved config is what checkpoints, run JSONs and
artifacts record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError

from prompt_banks.errors import UserError

Method = Literal["aape", "zeroshot", "cupl", "linear_probe"]
BANK_METHODS = ("aape", "cupl")  # the methods that read the prompt bank P_c
AggregatorKind = Literal["attention", "mlp", "mean", "random"]
ClassEmbed = Literal["template", "bank_mean", "both"]
Recipe = Literal["coop_sgd", "adamw"]
ProbeSolver = Literal["lbfgs", "adamw"]

# CoOp's epochs by shots (1 shot: 50, 2/4: 100, 8/16: 200); more shots than 16 keep 200.
COOP_EPOCHS_BY_SHOTS = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}


class TrainConfig(BaseModel):
    """What to train and how. Defaults follow the method page (paper values + its decisions)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = "aape"  # the baselines are this one flag
    # Aggregator (training only)
    aggregator: AggregatorKind = "attention"
    aggregator_heads: int = Field(8, ge=1)
    image_query: bool = True  # query = mean(P_c) + f(x), f zero-initialised
    aggregator_ffn: bool = False
    aggregator_ln_affine: bool = False
    distill_grad_to_aggregator: bool = False  # False = p_a is a stop-gradient teacher
    # Head g and class embeddings
    head_residual: bool = True  # w_c(x) = w_c + g([w_c ; h(x)]), last layer zero-initialised
    class_embed: ClassEmbed = "template"
    # Bank pruning: keep only descriptions whose margin on the training shots is above this
    # (aape.bank_quality.prune_bank); None keeps the whole bank.
    prune_margin: float | None = None
    # Losses
    lambda_distill: float = Field(5.0, ge=0.0)
    reward_scale: float = Field(2.5, ge=0.0)  # s in L_reward = -s * max(cos(x, p_a), 0)
    tau: float = Field(0.01, gt=0.0)
    # Recipes: coop_sgd (SGD + warm-up + cosine, epochs by shots) or adamw (same schedule shape)
    recipe: Recipe = "coop_sgd"
    batch_size: int = Field(32, ge=1)
    epochs: int | None = Field(None, ge=1)  # None: by recipe (CoOp table or adamw_epochs)
    sgd_lr: float = Field(0.002, gt=0.0)
    sgd_momentum: float = Field(0.9, ge=0.0)
    sgd_weight_decay: float = Field(5e-4, ge=0.0)  # CoOp's (Dassl) default
    warmup_epochs: int = Field(1, ge=0)
    warmup_lr: float = Field(1e-5, ge=0.0)  # constant lr during warm-up (CoOp)
    adamw_lr: float = Field(1e-3, gt=0.0)
    adamw_weight_decay: float = Field(1e-2, ge=0.0)
    adamw_epochs: int = Field(100, ge=1)
    # Linear-probe baseline. lbfgs: CLIP's / CLIP_benchmark's protocol, L-BFGS logistic
    # regression (scikit-learn) on the centre-crop features, C swept on the validation split
    # (`probe_c_grid`, then `probe_refine_steps` bisections in log10 C around the best), refit.
    # adamw: full-batch AdamW from zero-shot CLIP's weights (`probe_steps/lr/weight_decay`).
    probe_solver: ProbeSolver = "lbfgs"
    probe_c_grid: tuple[PositiveFloat, ...] = Field(
        (1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6), min_length=1
    )
    probe_refine_steps: int = Field(4, ge=0)
    probe_max_iter: int = Field(1000, ge=1)
    probe_steps: int = Field(300, ge=1)
    probe_lr: float = Field(1e-2, gt=0.0)
    probe_weight_decay: float = Field(1e-4, ge=0.0)
    # Run
    seed: int = 1
    device: str = "auto"  # CUDA when present, else CPU; or "cpu", "cuda:1", ...
    health_max_images: int = Field(2000, ge=1)  # held-out images used for teacher/student acc
    checkpoint_every: int = Field(0, ge=0)  # epochs between checkpoints; 0 = only at the end

    def epochs_for(self, shots: int, task_name: str = "") -> int:
        if self.epochs is not None:
            return self.epochs
        if self.recipe == "adamw":
            return self.adamw_epochs
        if task_name == "imagenet":  # CoOp trains ImageNet for 50 epochs at every shot count
            return 50
        eligible = [k for k in COOP_EPOCHS_BY_SHOTS if k <= max(shots, 1)]
        return COOP_EPOCHS_BY_SHOTS[max(eligible)]

    def resolve(self, shots: int, task_name: str = "") -> TrainConfig:
        """This config with `epochs` fixed for a task with `shots` images per class."""
        return self.model_copy(update={"epochs": self.epochs_for(shots, task_name)})

    def tag(self) -> str:
        """Short, readable name of what runs, for run directories and tables."""
        pruned = "" if self.prune_margin is None else f"-prune{self.prune_margin:g}"
        if self.method == "linear_probe" and self.probe_solver != "lbfgs":
            return f"linear_probe_{self.probe_solver}{pruned}"
        if self.method != "aape":
            return self.method + pruned
        parts = [f"aape-{self.aggregator}", f"lam{self.lambda_distill:g}", self.class_embed]
        parts.append(self.recipe.replace("_", ""))
        return "-".join(parts) + pruned


ConfigT = TypeVar("ConfigT", bound=TrainConfig)


def _coerce(value: str) -> Any:
    """A `--set` value: YAML scalars (5, 1e-3, true, null, text)."""
    return yaml.safe_load(value)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    model: type[ConfigT] = TrainConfig,  # type: ignore[assignment]
) -> ConfigT:
    """A config from a YAML/JSON file plus `key=value` overrides, or a one-line UserError.
    `model`: the config class (a subclass of TrainConfig with more switches)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"--config: {p} does not exist; pass a YAML or JSON file")
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise UserError(f"--config: {p} must hold a mapping of TrainConfig fields")
        data.update(loaded)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set: '{item}' is not key=value; e.g. --set lambda_distill=0")
        data[key.strip()] = _coerce(value)
    try:
        return model(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "config"
        raise UserError(f"config {field}: {err['msg']}; see `aape train --help`") from exc
