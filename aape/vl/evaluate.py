"""Image-text retrieval metrics, reported with CLIP_benchmark's keys, and their tables.

Recall@K over one test split: every image is a query over every caption of the split
(image->text; a hit when any of the image's own captions is in the top K) and every caption a
query over every image (text->image). CLIP_benchmark names them from the retrieved side:
`text_retrieval_recall@k` is image->text and `image_retrieval_recall@k` is text->image.
A rank counts the candidates scoring strictly higher than the best positive, so ties resolve in
the query's favour; with float scores a tie has probability zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aape.vl.tasks import CaptionSplit
from aape.vl.train import RetrievalResult
from prompt_banks.atomic import write_json_atomic, write_text_atomic

KS = (1, 5, 10)
CHUNK = 1024  # queries scored at once: [CHUNK, N] scores in memory


def _ranks_i2t(queries: torch.Tensor, texts: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Per image: how many captions score above its best own caption, [N_img]."""
    out = []
    for start in range(0, len(queries), CHUNK):
        scores = queries[start : start + CHUNK] @ texts.T  # [b, N_cap]
        rows = torch.arange(start, start + len(scores)).unsqueeze(1)
        own = owner.unsqueeze(0) == rows
        best = scores.masked_fill(~own, float("-inf")).max(1, keepdim=True).values
        out.append((scores > best).sum(1))
    return torch.cat(out)


def _ranks_t2i(queries: torch.Tensor, texts: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Per caption: how many images score above its own image, [N_cap]."""
    out = []
    for start in range(0, len(texts), CHUNK):
        scores = texts[start : start + CHUNK] @ queries.T  # [b, N_img]
        mine = scores.gather(1, owner[start : start + CHUNK].unsqueeze(1))
        out.append((scores > mine).sum(1))
    return torch.cat(out)


def recall_at_k(
    queries: torch.Tensor, texts: torch.Tensor, owner: torch.Tensor, ks: Sequence[int] = KS
) -> dict[str, float]:
    """CLIP_benchmark's retrieval metrics for image queries [N_img, d] and caption embeddings
    [N_cap, d] (both unit vectors) where caption j belongs to image owner[j]."""
    queries, texts = queries.float(), texts.float()
    i2t = _ranks_i2t(queries, texts, owner)
    t2i = _ranks_t2i(queries, texts, owner)
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float((t2i < k).float().mean())
        metrics[f"text_retrieval_recall@{k}"] = float((i2t < k).float().mean())
    return metrics


def evaluate_split(
    result: RetrievalResult, split: CaptionSplit, ks: Sequence[int] = KS
) -> dict[str, float]:
    """R@K of a trained (or zero-shot) retrieval model on one test split (centre crops)."""
    x = split.features.x[split.features.view == 0]
    captions = split.captions
    return recall_at_k(result.queries(x), captions.embeddings, captions.caption_image, ks)


@dataclass
class RetrievalRow:
    """One line of a retrieval table: a method trained on one dataset, tested on another."""

    method: str  # clip-zeroshot | aape-lam0 | aape | ...
    train_dataset: str | None  # None for CLIP zero-shot
    test_dataset: str
    setting: str  # zero-shot | transfer | fine-tuned
    metrics: dict[str, float]
    model: str = ""  # the CLIP model id
    n_images: int = 0
    n_captions: int = 0
    health: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def clip_benchmark(self) -> dict[str, Any]:
        """The row as CLIP_benchmark writes a result file (its `build` reads these)."""
        model, _, pretrained = self.model.partition("/")
        return {
            "dataset": self.test_dataset,
            "model": model or self.method,
            "pretrained": f"{pretrained or 'none'}+{self.method}",
            "task": "zeroshot_retrieval",
            "metrics": self.metrics,
            "language": "en",
        }


def results_json(rows: Sequence[RetrievalRow]) -> dict[str, Any]:
    return {
        "task": "zeroshot_retrieval",
        "rows": [{**row.__dict__, "clip_benchmark": row.clip_benchmark()} for row in rows],
    }


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def markdown_table(rows: Sequence[RetrievalRow], ks: Sequence[int] = KS) -> str:
    """image->text and text->image R@K in percent, one line per row."""
    head = ["setting", "method", "train", "test"]
    head += [f"i2t R@{k}" for k in ks] + [f"t2i R@{k}" for k in ks]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r.setting, r.method, r.train_dataset or "-", r.test_dataset]
        cells += [_pct(r.metrics[f"text_retrieval_recall@{k}"]) for k in ks]
        cells += [_pct(r.metrics[f"image_retrieval_recall@{k}"]) for k in ks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_recall(rows: Sequence[RetrievalRow], path: Path, k: int = 1) -> Path:
    """Grouped bars of image->text and text->image R@k per row, one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aape.report import save_figure

    settings = list(dict.fromkeys(r.setting for r in rows))
    fig, axes = plt.subplots(1, len(settings), figsize=(4 * len(settings), 3.5), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        shown = [r for r in rows if r.setting == setting]
        pos = range(len(shown))
        for shift, key, label in ((-0.2, "text", "image->text"), (0.2, "image", "text->image")):
            values = [100 * r.metrics[f"{key}_retrieval_recall@{k}"] for r in shown]
            ax.bar([p + shift for p in pos], values, width=0.4, label=label)
        ax.set_xticks(list(pos), labels=[r.method for r in shown], rotation=30, ha="right")
        ax.set(title=f"{setting} ({shown[0].test_dataset})", ylabel=f"R@{k} (%)")
    axes[0][0].legend(fontsize=7)
    saved = save_figure(fig, path)
    plt.close(fig)
    return saved


def write_results(rows: Sequence[RetrievalRow], out_dir: str | Path) -> dict[str, Path]:
    """results.json (every row, with its CLIP_benchmark form), results.md, a plot of R@1
    (recall_at_1.png), and one CLIP_benchmark result file per row under clip_benchmark/ (for
    `clip_benchmark build`)."""
    out = Path(out_dir)
    (out / "clip_benchmark").mkdir(parents=True, exist_ok=True)
    paths = {
        "json": write_json_atomic(results_json(rows), out / "results.json", indent=2),
        "markdown": write_text_atomic(markdown_table(rows), out / "results.md"),
        "plot": plot_recall(rows, out / "recall_at_1.png"),
    }
    for i, row in enumerate(rows):
        name = f"{i:02d}-{row.setting}-{row.method}-{row.test_dataset}.json"
        write_json_atomic(row.clip_benchmark(), out / "clip_benchmark" / name)
    return paths
