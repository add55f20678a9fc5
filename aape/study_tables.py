"""The simulation study's tables, plots and CSV."""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from aape.study_claims import lambda0, mean_std, paired, rows_of
from aape.study_plan import VARIANTS, StudyPlan
from aape.study_runs import Row
from prompt_banks.atomic import atomic_path

# -- the report -------------------------------------------------------------------------------


def _pct(mean: float, std: float | None = None) -> str:
    if math.isnan(mean):
        return "-"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _recipe_cell(r: Row) -> str:
    if r.recipe != "-":
        return f"{r.recipe} ({r.epochs})"
    return "probe (AdamW, full batch)" if r.variant == "linear_probe" else "no training"


def summary_table(rows: list[Row], keys: list[tuple[str, str, int]]) -> list[str]:
    head = [
        "world",
        "variant",
        "recipe (epochs)",
        "K",
        "prompts/class",
        "base",
        "new",
        "H",
        "teacher_acc",
        "student_acc",
        "train s",
    ]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for exp, vkey, k in keys:
        rs = rows_of(rows, exp, vkey, k)
        if not rs:
            continue
        r0 = rs[0]
        cells = [r0.world, VARIANTS[vkey].label, _recipe_cell(r0), str(k), r0.n_prompts]
        cells += [_pct(*mean_std([getattr(r, m) for r in rs])) for m in ("base", "new", "H")]
        cells += [
            _pct(mean_std([getattr(r, m) for r in rs])[0]) for m in ("teacher_acc", "student_acc")
        ]
        cells.append(f"{statistics.fmean(r.train_seconds for r in rs):.1f}")
        out.append("| " + " | ".join(cells) + " |")
    return out


def pairs(plan: StudyPlan) -> list[tuple[str, str, str, str, int, str]]:
    k, ka = plan.max_shots, plan.ablation_shots
    return [
        ("curves", "aape", "curves", "aape_l0", k, "distillation, normal world"),
        ("curves", "aape", "curves", "aape_l0", ka, "distillation, normal world"),
        ("control", "aape", "curves", "aape_l0", ka, "distillation, control world"),
        ("prompts-5", "aape", "curves", "aape_l0", ka, "distillation, 5 prompts per class"),
        ("small-llm", "aape", "curves", "aape_l0", ka, "distillation, small LLM"),
        ("recipes", "aape_sgd", "recipes", "aape_l0_sgd", ka, "distillation, SGD recipe"),
        ("recipes", "aape_sgd", "curves", "aape", ka, "SGD vs AdamW recipe"),
        ("curves", "aape", "curves", "cupl", k, "AAPE vs CuPL"),
        ("curves", "aape", "curves", "linear_probe", k, "AAPE vs linear probe (base only)"),
        ("curves", "cupl", "curves", "zeroshot", k, "CuPL vs zero-shot, normal"),
        ("control", "cupl", "control", "zeroshot", ka, "CuPL vs zero-shot, control"),
        ("curves", "aape", "ablations", "aape_mlp", ka, "attention vs mlp"),
        ("ablations", "aape_mlp", "ablations", "aape_mean", ka, "mlp vs mean"),
        ("ablations", "aape_mean", "ablations", "aape_random", ka, "mean vs random"),
        (
            "class-embed",
            "aape_bank_mean",
            "curves",
            "aape",
            ka,
            "class_embed bank_mean vs template",
        ),
        ("class-embed", "aape_both", "curves", "aape", ka, "class_embed both vs template"),
    ]


def pair_table(rows: list[Row], plan: StudyPlan) -> list[str]:
    out = [
        "| comparison | A | B | K | base A - B | new A - B | H A - B |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for ea, va, eb, vb, k, label in pairs(plan):
        a, b = rows_of(rows, ea, va, k), rows_of(rows, eb, vb, k)
        if a and b:
            cells = [paired(a, b, m).text() for m in ("base", "new", "H")]
            out.append(
                f"| {label} | {ea}: {VARIANTS[va].label} | {eb}: {VARIANTS[vb].label} | {k} | "
                + " | ".join(cells)
                + " |"
            )
    return out


def curve_table(rows: list[Row], variants: list[str], shots: list[int]) -> list[str]:
    out = [
        "| variant | metric | " + " | ".join(f"K={k}" for k in shots) + " |",
        "|" + " --- |" * (len(shots) + 2),
    ]
    for v in variants:
        for m in ("base", "new", "H"):
            cells = [
                _pct(*mean_std([getattr(r, m) for r in rows_of(rows, "curves", v, k)]))
                for k in shots
            ]
            if any(c != "-" for c in cells):
                out.append(f"| {VARIANTS[v].label} | {m} | " + " | ".join(cells) + " |")
    for m in ("teacher_acc", "student_acc"):
        cells = [
            _pct(mean_std([getattr(r, m) for r in rows_of(rows, "curves", "aape", k)])[0])
            for k in shots
        ]
        out.append(f"| {VARIANTS['aape'].label} | {m} | " + " | ".join(cells) + " |")
    for m in ("base", "new", "H"):
        cells = [
            paired(rows_of(rows, "curves", "aape", k), lambda0(rows, k), m).text() for k in shots
        ]
        out.append(f"| AAPE - AAPE lambda 0, paired | {m} | " + " | ".join(cells) + " |")
    return out


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: list[Row], variants: list[str], shots: list[int], path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, m in zip(axes, ("base", "new", "H"), strict=True):
        for color, v in enumerate(variants):  # one colour per variant on every panel
            pts = [
                (k, *mean_std([getattr(r, m) for r in rows_of(rows, "curves", v, k)]))
                for k in shots
            ]
            pts = [p for p in pts if not math.isnan(p[1])]
            if pts:
                ax.errorbar(
                    [p[0] for p in pts],
                    [100 * p[1] for p in pts],
                    yerr=[100 * p[2] for p in pts],
                    marker="o",
                    capsize=3,
                    label=VARIANTS[v].label,
                    color=f"C{color}",
                )
        ax.set(
            xscale="log",
            xlabel="shots per class",
            ylabel=f"{m} accuracy (%)",
            title=f"{m} (normal world)",
        )
        ax.set_xticks(shots, labels=[str(k) for k in shots])
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_bars(
    rows: list[Row], keys: list[tuple[str, str, int, str]], path: Path, title: str
) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.0 * len(keys)), 3.8))
    width = 0.27
    for j, m in enumerate(("base", "new", "H")):
        stats = [mean_std([getattr(r, m) for r in rows_of(rows, e, v, k)]) for e, v, k, _ in keys]
        ax.bar(
            [i + (j - 1) * width for i in range(len(keys))],
            [100 * s[0] for s in stats],
            width,
            yerr=[100 * s[1] for s in stats],
            capsize=2,
            label=m,
        )
    ax.set_xticks(
        range(len(keys)), labels=[lab for *_, lab in keys], rotation=25, ha="right", fontsize=7
    )
    ax.set(ylabel="accuracy (%)", title=title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip("."))
    _plt().close(fig)
    return path


def write_csv(rows: list[Row], path: Path) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(Row)], lineterminator="\n")
        w.writeheader()
        w.writerows(asdict(r) for r in rows)
    return path
