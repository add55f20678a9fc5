"""Flow parameters: pydantic models, the same ones `aape build-domain` and `aape demo` fill in.

Prefect validates a flow's parameters against these models, so a deployment's JSON parameters,
a CLI call and a Python call are checked by one set of rules. Library types are reused where
they exist: `CLIPSettings` (prompt_banks.spec) names a CLIP, `TrainConfig` (aape.config) says
what to train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aape.config import TrainConfig
from aape.protocol_names import TRANSFER_PROTOCOLS
from prompt_banks.generate_report import DEFAULT_MAX_FAILED_SHARE
from prompt_banks.spec import CLIPSettings, DomainSpec, bundled_spec_path, load_spec

# The baselines an evaluation can report beside AAPE: the names of `aape.baselines.BASELINES`.
Baseline = Literal["zeroshot", "cupl", "linear_probe", "linear_probe_adamw"]
DEFAULT_BASELINES: tuple[Baseline, ...] = ("zeroshot", "cupl", "linear_probe")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # AAPE_HOME: a local path, or an fsspec URL for the stores (banks, features, few-shot
    # manifests); runs and artifacts need a local home (prompt_banks.paths).
    home: str | None = None


def resolve_spec(spec: str) -> DomainSpec:
    """A domain spec from a YAML path, or the name of a spec shipped in prompt_banks/specs."""
    bundled = bundled_spec_path(spec)
    return load_spec(
        spec if Path(spec).suffix in (".yaml", ".yml") or not bundled.is_file() else bundled
    )


class GenerateParams(_Params):
    spec: str  # domain spec YAML path, or the name of a bundled spec (e.g. "dtd")
    retry_failed: bool = False  # ask again for rows stored as failed
    limit_classes: int | None = Field(None, ge=1)  # only the first N classes (smoke runs)
    # LLMSettings fields that override the spec's (backend, base_url, model, concurrency, ...).
    llm: dict[str, Any] = Field(default_factory=dict)
    # The run fails when more than this share of the rows it asked for failed.
    max_failed_share: float = Field(DEFAULT_MAX_FAILED_SHARE, ge=0, le=1)
    progress: bool = True


class EmbedParams(_Params):
    domain: str
    clip: CLIPSettings = CLIPSettings()
    shard_size: int = Field(512, ge=1)  # texts per shard (one task, one store file)
    batch_size: int = Field(256, ge=1)


class FeatureParams(_Params):
    dataset: str  # a name of aape.datasets.DATASETS
    data_root: str | None = None
    clip: CLIPSettings = CLIPSettings()
    shots: int | None = Field(16, ge=1)  # train images per class to extract; None = all
    seeds: tuple[int, ...] = (1,)  # few-shot draws whose train images are extracted
    n_views: int = Field(16, ge=0)  # augmented views per train image (+ the centre crop)
    splits: tuple[str, ...] = ("train", "val", "test")
    max_eval_images: int | None = Field(None, ge=1)  # per eval split, per class; None = all
    shard_size: int = Field(256, ge=1)  # images per shard
    batch_size: int = Field(64, ge=1)


class CompactParams(_Params):
    # Parts a merge replaced are deleted once this long has passed (readers that listed the store
    # before the merge may still open them); the default matches `aape bank compact`.
    grace_s: float = Field(900.0, ge=0)
    features: bool = True  # the feature cache too


class TrainParams(_Params):
    dataset: str
    domain: str  # the bank domain of the dataset's classes
    data_root: str | None = None
    clip: CLIPSettings = CLIPSettings()
    shots: int = Field(16, ge=1)
    seed: int = 1
    n_views: int = Field(16, ge=0)
    max_eval_images: int | None = Field(None, ge=1)
    config: TrainConfig = TrainConfig()
    progress: bool = True


class BankQualityParams(_Params):
    dataset: str
    domain: str
    data_root: str | None = None
    clip: CLIPSettings = CLIPSettings()
    shots: int = Field(16, ge=1)  # the training images the margins are measured on
    seed: int = 1
    n_views: int = Field(16, ge=0)
    max_eval_images: int | None = Field(None, ge=1)


class EvaluateParams(_Params):
    dataset: str
    domain: str
    data_root: str | None = None
    clip: CLIPSettings = CLIPSettings()
    shots: tuple[int, ...] = (16,)
    seeds: tuple[int, ...] = (1,)
    n_views: int = Field(16, ge=0)
    max_eval_images: int | None = Field(None, ge=1)
    config: TrainConfig = TrainConfig()  # AAPE; always reported beside its lambda = 0 twin
    baselines: tuple[Baseline, ...] = DEFAULT_BASELINES
    force: bool = False  # re-run complete runs
    progress: bool = True
    # What each run asks of a Ray cluster (prefect_ray remote_options); ignored on threads.
    cpus_per_run: float = Field(1.0, gt=0)
    gpus_per_run: float = Field(0.0, ge=0)


class GridDataset(BaseModel):
    """One dataset of a grid and the bank domain of its classes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    domain: str
    data_root: str | None = None  # None: the grid's data_root


class GridTarget(BaseModel):
    """A test-side dataset of the transfer protocols: its own classes, and their bank domain
    (needed unless the config embeds classes by template)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    domain: str | None = None
    data_root: str | None = None  # None: the grid's data_root


class GridParams(_Params):
    """A training grid over many datasets (the fields of a grid file): every (dataset, shots,
    seed, method) is one run, and one combined report has the per-dataset and Average rows."""

    datasets: tuple[GridDataset, ...] = Field(min_length=1)
    protocol: Literal["few-shot", "base-to-new", "cross-dataset", "domain-generalisation"] = (
        "few-shot"
    )
    # cross-dataset / domain-generalisation: every dataset's runs are tested on these.
    targets: tuple[GridTarget, ...] = ()
    data_root: str | None = None
    clip: CLIPSettings = CLIPSettings()
    shots: tuple[int, ...] = Field((16,), min_length=1)
    seeds: tuple[int, ...] = Field((1,), min_length=1)
    n_views: int = Field(16, ge=0)
    max_eval_images: int | None = Field(None, ge=1)
    max_missing: int = Field(0, ge=0)  # missing or unreadable images tolerated per dataset
    shots_policy: Literal["error", "all-available"] = "error"  # classes with fewer than K
    config: TrainConfig = TrainConfig()  # AAPE (+ its lambda = 0 twin unless lambda0 is False)
    lambda0: bool = True
    baselines: tuple[Baseline, ...] = DEFAULT_BASELINES
    force: bool = False
    progress: bool = True
    cpus_per_run: float = Field(1.0, gt=0)
    gpus_per_run: float = Field(0.0, ge=0)
    report_dir: str | None = None  # default: <home>/runs/grid-report

    @model_validator(mode="after")
    def _targets_fit_the_protocol(self) -> GridParams:
        transfer = self.protocol in TRANSFER_PROTOCOLS
        if transfer and not self.targets:
            raise ValueError(f"targets: protocol {self.protocol} needs datasets to test on")
        if self.targets and not transfer:
            raise ValueError(
                "targets: only the cross-dataset and domain-generalisation protocols have them"
            )
        if self.config.class_embed != "template":
            for t in self.targets:
                if t.domain is None:
                    raise ValueError(
                        f"targets: {t.dataset} needs a domain (class_embed="
                        f"{self.config.class_embed} reads its bank)"
                    )
        return self


class BuildDomainParams(_Params):
    """Everything for one domain spec and one dataset: the bank, the features, AAPE + baselines."""

    spec: str
    dataset: str
    data_root: str | None = None
    clip: CLIPSettings | None = None  # None: the spec's CLIP
    llm: dict[str, Any] = Field(default_factory=dict)
    max_failed_share: float = Field(DEFAULT_MAX_FAILED_SHARE, ge=0, le=1)  # of generated rows
    shots: tuple[int, ...] = (16,)
    seeds: tuple[int, ...] = (1,)
    n_views: int = Field(16, ge=0)
    max_eval_images: int | None = Field(None, ge=1)
    config: TrainConfig = TrainConfig()
    baselines: tuple[str, ...] = DEFAULT_BASELINES
    generate: bool = True  # False: use the bank already in the store (imported or generated)
    train: bool = True  # False: refresh the bank and the features only
    progress: bool = True
