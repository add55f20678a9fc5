"""`aape bank report` and `aape bank compare`: bank quality as JSON, Markdown and a plot.

The scores come from `aape.bank_quality` (margins, proxies), the store's hygiene from
`prompt_banks.queries.hygiene`, and, after a training run, the teacher's attention over each
class's descriptions, read from the run's checkpoint (never needed at inference).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from aape.bank_quality import description_margins, quality
from aape.config import TrainConfig
from aape.data import Task
from aape.model import PromptAggregator
from aape.torch_files import checkpoint_dict
from prompt_banks.atomic import write_json_atomic, write_text_atomic
from prompt_banks.errors import UserError


def teacher_attention(
    run: str | Path, task: Task, texts: dict[str, list[str]] | None = None, show: int = 3
) -> dict[str, Any]:
    """Which descriptions the trained teacher weighs: per class, the entropy of its attention
    (mean over the class's training images; 1 = uniform over the class's descriptions) and the
    top-weighted texts. `run` is the folder (or checkpoint) of an AAPE run on `task`'s bank."""
    from aape.train import CHECKPOINT_KEYS, CHECKPOINT_NAME

    path = Path(run) / CHECKPOINT_NAME if Path(run).is_dir() else Path(run)
    if not path.is_file():
        raise UserError(f"--run: no {CHECKPOINT_NAME} at {path}; pass the folder of an AAPE run")
    state = checkpoint_dict(
        path, (*CHECKPOINT_KEYS, "class_names"), field="--run",
        fix="train the run again with `aape train --force`",
    )  # fmt: skip
    cfg = TrainConfig(**state["config"])
    if cfg.method != "aape" or cfg.aggregator != "attention":
        raise UserError(f"--run: {path} is not an attention-aggregator AAPE run; nothing to read")
    bank, mask = task.texts.bank, task.texts.bank_mask
    if bank is None or mask is None or list(state["class_names"]) != list(task.texts.names):
        raise UserError(
            f"--run: {path} was trained on other classes than this bank's; pass its run"
        )
    agg = PromptAggregator(cfg, bank, mask)
    prefix = "aggregator."
    agg.load_state_dict(
        {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    )
    rows = []
    with torch.no_grad():
        for c, name in enumerate(task.texts.names):
            x = task.train.x[task.train.labels == c].float()
            classes = torch.full((len(x),), c, dtype=torch.long)
            p, m = agg.gather(bank, mask, classes)
            weights = agg.attention(x, p, m, classes).mean(0)[mask[c]]  # [n_c]
            n = len(weights)
            entropy = float(-(weights * weights.clamp_min(1e-12).log()).sum())
            top = torch.argsort(weights, descending=True)[:show].tolist()
            labels = (texts or {}).get(name)
            rows.append(
                {
                    "class": name,
                    "entropy": entropy / math.log(n) if n > 1 else 1.0,
                    "top": [
                        {
                            "text": labels[i] if labels else f"description #{i}",
                            "weight": float(weights[i]),
                        }
                        for i in top
                    ],
                }
            )
    return {"run": str(path), "per_class": rows}


def store_texts(
    home: str | Path | None, domain: str, task: Task, *, tokens_of: str | None
) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """From the bank store of `home`: each class's texts in bank order (the order of the task's
    bank rows) and the store's hygiene per class. `tokens_of`: the CLIP model id whose tokenizer
    counted the texts (None where the bank came from elsewhere)."""
    from prompt_banks.paths import banks_dir
    from prompt_banks.queries import class_texts, hygiene
    from prompt_banks.store import BankStore
    from prompt_banks.text import canonical_class_name

    store = BankStore(banks_dir(home))
    by_key = class_texts(store, domain, task.texts.names)
    health = hygiene(store, domain, tokens_of)
    names = task.texts.names
    return (
        {n: by_key.get(canonical_class_name(n), []) for n in names},
        {n: health.get(canonical_class_name(n), {}) for n in names},
    )


def bank_report(
    task: Task,
    *,
    texts: dict[str, list[str]] | None = None,
    hygiene: dict[str, dict[str, Any]] | None = None,
    run: str | Path | None = None,
) -> dict[str, Any]:
    """Everything `aape bank report` shows, as JSON-able data."""
    report = quality(task, texts)
    if hygiene is not None:
        report["hygiene"] = hygiene
    if run is not None:
        report["attention"] = teacher_attention(run, task, texts)
    return report


def _plot(task: Task, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = description_margins(task.texts, task.train)
    vals = m.margin[m.mask].numpy()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(vals, bins=40, color="#4c72b0")
    ax.axvline(0.0, color="#c44e52", lw=1)
    ax.set(
        xlabel="margin: mean cos to own class's images - best other class's",
        ylabel="descriptions",
        title=f"{task.name}: {100 * (vals < 0).mean():.1f}% describe another class better",
    )
    fig.tight_layout()
    path = out / "margins.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _cell(text: str) -> str:
    """A description as a Markdown table cell: a `|` in it would end the cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any], plot: str | None = None) -> str:
    m, px = report["margin"], report["proxies"]
    lines = [
        f"# Bank quality: {report['task']}",
        "",
        f"CLIP: `{report['model_id']}`. {report['n_descriptions']} descriptions; margins use the "
        "few-shot training images only.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| descriptions with a negative margin | {_pct(m['negative_share'])}% |",
        f"| median margin | {m['median']:.4f} |",
        f"| near-duplicates (cosine >= {report['near_duplicates']['cosine_at_least']}) | "
        f"{report['near_duplicates']['count']} |",
        f"| CuPL accuracy ({px['split']}, {px['n_images']} images) | {_pct(px['cupl_acc'])}% |",
        f"| template zero-shot accuracy ({px['split']}) | {_pct(px['zeroshot_acc'])}% |",
    ]
    if plot:
        lines += ["", f"![margins]({plot})"]
    hygiene = report.get("hygiene") or {}
    lines += [
        "",
        "## Per class",
        "",
        "| class | n | negative | median margin | near-dup | dropped | failed | truncated | "
        "best description | worst description |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["per_class"]:
        h = hygiene.get(row["class"], {})
        best, worst = row["best"][0], row["worst"][0]
        lines.append(
            f"| {row['class']} | {row['n']} | {_pct(row['negative_share'])}% | "
            f"{row['median_margin']:.4f} | {row['near_duplicates']} | {h.get('dropped', '-')} | "
            f"{h.get('failed', '-')} | "
            f"{_pct(h['truncated_share']) + '%' if 'truncated_share' in h else '-'} | "
            f"{_cell(best['text'])} ({best['margin']:+.3f}) | {_cell(worst['text'])} "
            f"({worst['margin']:+.3f}, "
            f"fits {worst['fits_best_besides_own']}) |"
        )
    if "attention" in report:
        lines += ["", "## What the teacher weighs", "", "| class | entropy | top description |"]
        lines.append("| --- | --- | --- |")
        for row in report["attention"]["per_class"]:
            top = row["top"][0]
            lines.append(
                f"| {row['class']} | {row['entropy']:.3f} | {top['text']} ({top['weight']:.3f}) |"
            )
    return "\n".join(lines) + "\n"


def write_bank_report(task: Task, report: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and margins.png into `out`."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    plot = _plot(task, folder)
    paths = {
        "json": write_json_atomic(report, folder / "report.json"),
        "markdown": write_text_atomic(markdown(report, plot.name), folder / "report.md"),
        "plot": plot,
    }
    return paths


def compare_markdown(
    reports: dict[str, dict[str, Any]], accuracy: dict[str, dict[str, float]]
) -> str:
    """Banks side by side: the report's headline figures and, per bank, the test accuracy of the
    methods run through the harness (same splits, seeds and recipe)."""
    methods = sorted({m for acc in accuracy.values() for m in acc})
    head = [
        "bank",
        "negative margins",
        "median margin",
        "near-dups",
        "CuPL (val)",
        "zero-shot (val)",
    ]
    lines = ["| " + " | ".join(head + [f"{m} (test)" for m in methods]) + " |"]
    lines.append("| " + " | ".join(["---"] * (len(head) + len(methods))) + " |")
    for name, r in reports.items():
        cells = [
            name,
            f"{_pct(r['margin']['negative_share'])}%",
            f"{r['margin']['median']:.4f}",
            str(r["near_duplicates"]["count"]),
            f"{_pct(r['proxies']['cupl_acc'])}%",
            f"{_pct(r['proxies']['zeroshot_acc'])}%",
        ]
        cells += [
            f"{_pct(accuracy[name][m])}%" if m in accuracy.get(name, {}) else "-" for m in methods
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
