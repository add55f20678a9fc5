"""The Markdown report of captioning/VQA evaluations: one row per run, then sample outputs.

VQA columns are per protocol: "VQA K-shot" for a prefix trained on captions only (zero/few-shot,
MAGMA's protocol), "VQA fine-tuned K-shot" for one fine-tuned on VQA train pairs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prompt_banks.errors import UserError


def read_evals(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Evaluation JSONs (`eval-*.json`), each file or every one in a run folder."""
    out = []
    for p in map(Path, paths):
        files = sorted(p.glob("eval-*.json")) if p.is_dir() else [p]
        if not files or not all(f.is_file() for f in files):
            raise UserError(f"--runs: {p} holds no eval-*.json; run `aape vl caption-eval` first")
        for f in files:
            try:
                out.append(json.loads(f.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise UserError(f"--runs: cannot read {f} ({type(exc).__name__})") from exc
    return out


def _num(value: Any, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def fine_tuned(e: dict[str, Any]) -> bool:
    """Whether the evaluated run was fine-tuned on VQA pairs (`aape vl vqa-train`)."""
    return str(e.get("vqa", {}).get("protocol", "")).startswith("fine-tuned")


def _row_name(e: dict[str, Any]) -> str:
    return f"{e['method']} + VQA fine-tuning" if fine_tuned(e) else e["method"]


def markdown_report(evals: Sequence[dict[str, Any]]) -> str:
    columns = sorted(
        {(fine_tuned(e), int(k)) for e in evals for k in e.get("vqa", {}).get("by_shots", {})}
    )
    head = ["run", "train steps", "loss first -> last", "steps/s", "CIDEr-D", "CLIP-S", "RefCLIP-S"]
    head += [f"VQA {'fine-tuned ' if ft else ''}{k}-shot" for ft, k in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in evals:
        t, cap = e.get("train", {}), e.get("captioning", {})
        by = e.get("vqa", {}).get("by_shots", {})
        cells = [
            _row_name(e),
            str(t.get("steps", "-")),
            f"{_num(t.get('task_loss_first'))} -> {_num(t.get('task_loss_last'))}",
            _num(t.get("steps_per_s"), "{:.2f}"),
            _num(cap.get("cider_d")),
            _num(cap.get("clip_score")),
            _num(cap.get("ref_clip_score")),
        ]
        cells += [
            _num(by.get(str(k), {}).get("accuracy") if ft == fine_tuned(e) else None, "{:.1f}")
            for ft, k in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for e in evals:
        cap = e.get("captioning")
        if cap:
            lines += ["", f"Sample captions, {_row_name(e)} ({cap['dataset']}/{cap['split']}, "
                      f"{cap['decoding']}, tokenizer {cap['tokenizer']}):", ""]  # fmt: skip
            lines += [f"- `{s['image']}`: \"{s['caption']}\" (ref: \"{s['references'][0]}\")"
                      for s in cap["samples"]]  # fmt: skip
        for k, res in sorted(e.get("vqa", {}).get("by_shots", {}).items()):
            lines += ["", f"Sample answers, {_row_name(e)}, {k}-shot:", ""]
            lines += [f"- Q: {s['question']} A: \"{s['answer']}\" (truth \"{s['truth']}\", "
                      f"acc {s['accuracy']:.2f})" for s in res["samples"][:3]]  # fmt: skip
    return "\n".join(lines) + "\n"


def loss_plot(runs: Sequence[str | Path], path: str | Path) -> Path:
    """The next-token loss per training step of each run (its train.json), one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aape.report import save_figure

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for run in map(Path, runs):
        file = run / "train.json"
        if not file.is_file():
            raise UserError(f"--runs: {file} does not exist; train with `aape vl caption-train`")
        saved = json.loads(file.read_text(encoding="utf-8"))
        steps = [r["step"] for r in saved["history"]]
        ax.plot(steps, [r["task"] for r in saved["history"]], label=run.name, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("next-token loss")
    ax.legend()
    out = save_figure(fig, Path(path))
    plt.close(fig)
    return out
