"""Baselines in the same harness: zero-shot CLIP, CuPL, and a linear probe on cached features.

Every classifier here and the trained AAPE answer `logits(x, texts) -> [N, C]` for the classes of
`texts`, so evaluation treats them alike. (AAPE without L_distill is just `lambda_distill=0`.)

The linear probe follows CLIP's and CLIP_benchmark's protocol by default (`probe_solver=lbfgs`):
scikit-learn's L-BFGS logistic regression on the L2-normalised centre-crop features, its inverse
regularisation C chosen on the validation split (a coarse log grid, then bisections in log10 C
around the best), then refit on the training images with the chosen C. Without a validation
split, C is chosen by stratified cross-validation on the training images. The sweep (every C
tried, its validation accuracy, the C chosen) is returned for the run record.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aape.config import TrainConfig
from aape.data import ClassTexts, FeatureSet
from aape.model import class_embeddings
from prompt_banks.clip import resolve_device
from prompt_banks.errors import UserError


class Classifier(Protocol):
    def logits(self, x: torch.Tensor, texts: ClassTexts) -> torch.Tensor: ...


# `aape eval --baselines` names: each is the main config with these fields changed.
BASELINES: dict[str, dict[str, Any]] = {
    "zeroshot": {"method": "zeroshot"},
    "cupl": {"method": "cupl"},
    "linear_probe": {"method": "linear_probe", "probe_solver": "lbfgs"},
    "linear_probe_adamw": {"method": "linear_probe", "probe_solver": "adamw"},
}


def baseline_config(cfg: TrainConfig, name: str) -> TrainConfig:
    """`cfg` turned into the baseline `name`, or a UserError listing the names."""
    if name not in BASELINES:
        raise UserError(f"--baselines: '{name}' is not one of {', '.join(BASELINES)}")
    return cfg.model_copy(update=BASELINES[name])


class TextClassifier:
    """Zero-shot CLIP (`template`: "a photo of a {c}.") or CuPL (`bank_mean`): x . w_c / tau."""

    def __init__(self, kind: str, tau: float) -> None:
        self.kind = kind
        self.tau = tau

    def logits(self, x: torch.Tensor, texts: ClassTexts) -> torch.Tensor:
        if self.kind != "template" and texts.bank is None:
            raise UserError("method cupl: the task has no prompt bank; pass a bank domain")
        w = class_embeddings(texts, self.kind).to(x.device)
        return F.normalize(x, dim=-1) @ w.T / self.tau


class LinearProbe(nn.Module):
    """Logistic regression on the cached features; knows only its training classes."""

    def __init__(self, dim: int, class_names: list[str]) -> None:
        super().__init__()
        self.class_names = list(class_names)
        self.linear = nn.Linear(dim, len(class_names))

    def logits(self, x: torch.Tensor, texts: ClassTexts) -> torch.Tensor:
        if texts.names != self.class_names:
            raise UserError(
                "method linear_probe: it can only score the classes it was trained on; "
                "evaluate it on the training classes only"
            )
        return self.linear(F.normalize(x, dim=-1))


def train_linear_probe(
    train: FeatureSet, texts: ClassTexts, cfg: TrainConfig, val: FeatureSet | None = None
) -> tuple[LinearProbe, dict[str, Any]]:
    """The probe of `cfg.probe_solver` and what was swept to fit it ({} for adamw)."""
    if cfg.probe_solver == "adamw":
        return _adamw_probe(train, texts, cfg), {}
    return _lbfgs_probe(train, texts, cfg, val)


def _adamw_probe(train: FeatureSet, texts: ClassTexts, cfg: TrainConfig) -> LinearProbe:
    """Full-batch AdamW on every cached view, seeded; initialised at zero-shot CLIP's weights."""
    device = resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        probe = LinearProbe(train.dim, texts.names)
    with (
        torch.no_grad()
    ):  # start from the zero-shot classifier so few shots cannot do worse by much
        probe.linear.weight.copy_(class_embeddings(texts, "template") / cfg.tau)
        probe.linear.bias.zero_()
    probe.to(device)
    x, y = F.normalize(train.x, dim=-1).to(device), train.labels.to(device)
    opt = torch.optim.AdamW(
        probe.parameters(), lr=cfg.probe_lr, weight_decay=cfg.probe_weight_decay
    )
    for _ in range(cfg.probe_steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(probe.linear(x), y).backward()
        opt.step()
    return probe.cpu()


def _centre(fs: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
    keep = fs.view == 0
    return F.normalize(fs.x[keep], dim=-1).double().numpy(), fs.labels[keep].numpy()


def _fit_lr(x: np.ndarray, y: np.ndarray, c: float, cfg: TrainConfig) -> Any:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():  # a tiny C or a separable few-shot set may stop at max_iter
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        # 1 shot: as many classes as images, which scikit-learn takes for a regression target
        warnings.filterwarnings("ignore", message="The number of unique classes is greater")
        return LogisticRegression(C=c, max_iter=cfg.probe_max_iter, random_state=cfg.seed).fit(x, y)


def _scorer(
    x: np.ndarray, y: np.ndarray, val: FeatureSet | None, cfg: TrainConfig
) -> tuple[Callable[[float], float], str]:
    """C -> validation accuracy, and what the score was measured on."""
    if val is not None and len(val.labels) > 0:
        xv, yv = _centre(val)
        return (lambda c: float((_fit_lr(x, y, c, cfg).predict(xv) == yv).mean())), "val"
    per_class = np.bincount(y)
    folds = int(min(per_class[per_class > 0].min(), 5))
    if folds < 2:
        return (lambda c: float("nan")), "none: no validation split and 1 image per class"
    from sklearn.model_selection import StratifiedKFold

    split = list(StratifiedKFold(folds, shuffle=True, random_state=cfg.seed).split(x, y))

    def cv(c: float) -> float:
        hits = [(_fit_lr(x[a], y[a], c, cfg).predict(x[b]) == y[b]).mean() for a, b in split]
        return float(np.mean(hits))

    return cv, f"{folds}-fold cross-validation on the training images"


def sweep_c(score: Callable[[float], float], grid: tuple[float, ...], refine: int) -> dict:
    """The C of best score: `grid` first, then `refine` rounds that try the log10 midpoints
    between the best C and its nearest tried neighbours. Several C with the best score (a
    plateau, common with few validation images): the middle one of them. Returns
    {"C", "tried": [[C, score], ...] in the order tried}."""
    tried: dict[float, float] = {}

    def trial(c: float) -> None:
        if c not in tried:
            tried[c] = score(c)

    for c in sorted(grid):
        trial(c)
    for _ in range(refine if len(tried) > 1 else 0):
        best = _best(tried)
        cs = sorted(tried)
        i = cs.index(best)
        for j in (i - 1, i + 1):
            if 0 <= j < len(cs):
                trial(float(10 ** ((math.log10(best) + math.log10(cs[j])) / 2)))
    return {"C": _best(tried), "tried": [[c, s] for c, s in tried.items()]}


def _best(tried: dict[float, float]) -> float:
    ok = {c: s for c, s in tried.items() if not math.isnan(s)}
    if not ok:  # nothing to choose on: the middle of the grid (C = 1 for the default)
        cs = sorted(tried)
        return cs[len(cs) // 2]
    top = max(ok.values())
    plateau = sorted(c for c, s in ok.items() if s == top)
    return plateau[(len(plateau) - 1) // 2]


def _lbfgs_probe(
    train: FeatureSet, texts: ClassTexts, cfg: TrainConfig, val: FeatureSet | None
) -> tuple[LinearProbe, dict[str, Any]]:
    x, y = _centre(train)
    if len(np.unique(y)) < 2:
        raise UserError(
            "method linear_probe: the training images cover fewer than 2 classes; "
            "check the dataset and shots"
        )
    from threadpoolctl import threadpool_limits

    # BLAS threads as many as torch's: the default (every core) oversubscribes a shared host
    # and is 10x slower there on these small problems.
    with threadpool_limits(limits=torch.get_num_threads()):
        score, selected_on = _scorer(x, y, val, cfg)
        sweep = sweep_c(score, cfg.probe_c_grid, cfg.probe_refine_steps)
        clf = _fit_lr(x, y, sweep["C"], cfg)
    probe = LinearProbe(train.dim, texts.names)
    with torch.no_grad():  # classes without a training image can never win
        probe.linear.weight.zero_()
        probe.linear.bias.fill_(-1e9)
        cols = torch.as_tensor(clf.classes_, dtype=torch.long)
        coef, bias = np.atleast_2d(clf.coef_), np.atleast_1d(clf.intercept_)
        if len(cols) == 2 and coef.shape[0] == 1:  # binary: one row for class 1 vs class 0
            coef, bias = np.concatenate([-coef / 2, coef / 2]), np.array([-bias[0], bias[0]]) / 2
        probe.linear.weight[cols] = torch.from_numpy(coef).float()
        probe.linear.bias[cols] = torch.from_numpy(bias).float()
    info = {"solver": "lbfgs", "selected_on": selected_on, **sweep, "grid": list(cfg.probe_c_grid)}
    return probe, info
