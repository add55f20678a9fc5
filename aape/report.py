"""Aggregate run JSONs into tables (Markdown + CSV, mean and std over seeds) and PNG plots, and
export them as CLIP_benchmark result JSONs (`<out>/clip_benchmark/`, for `clip_benchmark build`)."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from aape.clip_benchmark_export import EXPORT_DIR, write_clip_benchmark
from aape.evaluate import average_row
from aape.protocols import QUARANTINE_FIX, RESULT_NAME
from prompt_banks.atomic import atomic_path, write_text_atomic
from prompt_banks.json_files import read_json
from prompt_banks.schema import stable_hash

# The headline metrics of each protocol, in table order.
PROTOCOL_METRICS = {
    "few-shot": ("acc1", "acc5", "mean_per_class_recall"),
    "base-to-new": ("base", "new", "H"),
}
DEFAULT_METRICS = ("acc1",)


def load_records(runs_root: str | Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(Path(runs_root).rglob(RESULT_NAME)):
        rec = read_json(path, "runs", QUARANTINE_FIX)
        if rec.get("complete"):
            rec["_path"] = str(path.parent)
            records.append(rec)
    return records


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def metric_names(protocol: str, recs: list[dict[str, Any]]) -> list[str]:
    """Headline metrics; transfer protocols add top-1 on each target (`acc1@<target>`)."""
    names = list(PROTOCOL_METRICS.get(protocol, DEFAULT_METRICS))
    for rec in recs:
        for target in rec.get("targets", {}):
            if target != "source" and f"acc1@{target}" not in names:
                names.append(f"acc1@{target}")
    return names


def _metric(rec: dict[str, Any], name: str) -> float:
    if "@" in name:  # acc1@<target>
        key, target = name.split("@", 1)
        v = rec.get("targets", {}).get(target, {}).get(key)
    else:
        v = rec.get(name)
    return float("nan") if v is None else float(v)


def method_labels(records: list[dict[str, Any]]) -> list[str]:
    """Each record's method as tables show it: the tag, `@<bank domain>` for a method that read
    a store's bank, and the identity hash where two settings would otherwise share a label."""
    labels = []
    for rec in records:
        bank = rec.get("bank") or {}
        labels.append(rec["method"] + (f"@{bank['domain']}" if bank.get("domain") else ""))
    settings: dict[tuple, set[str]] = defaultdict(set)
    idents = [stable_hash(rec["identity"])[:8] if rec.get("identity") else "" for rec in records]
    for rec, label, ident in zip(records, labels, idents, strict=True):
        settings[(rec["protocol"], rec["task"], label)].add(ident)
    return [
        f"{label}-{ident}" if len(settings[(rec["protocol"], rec["task"], label)]) > 1 else label
        for rec, label, ident in zip(records, labels, idents, strict=True)
    ]


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (protocol, task, method setting, shots): mean and std over seeds, in percent
    (a method with two banks or two configs is two rows, see `method_labels`)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for rec, label in zip(records, method_labels(records), strict=True):
        groups[(rec["protocol"], rec["task"], label, rec["shots"])].append(rec)
    rows = []
    for (protocol, task, method, shots), recs in sorted(groups.items()):
        row: dict[str, Any] = {
            "protocol": protocol,
            "task": task,
            "method": method,
            "shots": shots,
            "seeds": len(recs),
        }
        for m in metric_names(protocol, recs):
            mean, std = _mean_std([100 * _metric(r, m) for r in recs])
            row[f"{m}_mean"], row[f"{m}_std"] = mean, std
        for health in ("teacher_acc", "student_acc"):
            mean, _ = _mean_std([100 * r["health"].get(health, float("nan")) for r in recs])
            row[health] = mean
        short = {k for r in recs for k in (r.get("data") or {}).get("short_classes") or {}}
        if short:  # trained under --shots-policy all-available on fewer than `shots` images
            row["short_classes"] = len(short)
        rows.append(row)
    for method in sorted({r["method"] for r in rows if r["protocol"] == "base-to-new"}):
        per_task = [r for r in rows if r["protocol"] == "base-to-new" and r["method"] == method]
        avg = average_row([{"base": r["base_mean"], "new": r["new_mean"]} for r in per_task])
        rows.append(
            {
                "protocol": "base-to-new",
                "task": "Average",
                "method": method,
                "shots": per_task[0]["shots"],
                "seeds": min(r["seeds"] for r in per_task),
                "base_mean": avg["base"],
                "new_mean": avg["new"],
                "H_mean": avg["H"],
            }
        )
    return rows


def _fmt(mean: Any, std: Any = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def markdown(rows: list[dict[str, Any]], plots: list[Path] | None = None) -> str:
    out = ["# AAPE results", "", "Accuracies in percent, mean ± std over seeds.", ""]
    for protocol in sorted({r["protocol"] for r in rows}):
        metrics = [
            k.removesuffix("_mean")
            for r in rows
            if r["protocol"] == protocol
            for k in r
            if k.endswith("_mean")
        ]
        metrics = list(dict.fromkeys(metrics))
        head = ["task", "method", "shots", "seeds", *metrics, "teacher_acc", "student_acc"]
        out += [f"## {protocol}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for r in (r for r in rows if r["protocol"] == protocol):
            shots = str(r["shots"])
            if r.get("short_classes"):
                shots += f" (all-available, {r['short_classes']} short)"
            cells = [r["task"], r["method"], shots, str(r["seeds"])]
            cells += [_fmt(r.get(f"{m}_mean"), r.get(f"{m}_std")) for m in metrics]
            cells += [_fmt(r.get("teacher_acc")), _fmt(r.get("student_acc"))]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    for plot in plots or []:
        out += [f"![{plot.stem}]({plot.name})", ""]
    return "\n".join(out)


def probe_section(records: list[dict[str, Any]]) -> list[str]:
    """What the linear probes swept: the C grid, where C was chosen, and the C of each run."""
    probes = [r for r in records if r.get("probe")]
    if not probes:
        return []
    out = ["## Linear probe: regularisation sweep", ""]
    for grid, on in sorted({(str(r["probe"]["grid"]), r["probe"]["selected_on"]) for r in probes}):
        out.append(f"- C grid {grid}, then bisections in log10 C around the best; chosen on: {on}")
    out += ["", "| protocol | task | shots | seed | C tried | C chosen | its score (%) |"]
    out.append("|" + " --- |" * 7)
    for r in sorted(probes, key=lambda r: (r["protocol"], r["task"], r["shots"], r["seed"])):
        p = r["probe"]
        score = dict(map(tuple, p["tried"])).get(p["C"])
        cells = [r["protocol"], r["task"], str(r["shots"]), str(r["seed"]), str(len(p["tried"]))]
        cells += [f"{p['C']:.3g}", _fmt(None if score is None else 100 * score)]
        out.append("| " + " | ".join(cells) + " |")
    return [*out, ""]


def to_csv(rows: list[dict[str, Any]]) -> str:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def plot_accuracy_vs_shots(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    few = [r for r in rows if r["protocol"] == "few-shot"]
    for task in sorted({r["task"] for r in few}):
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for method in sorted({r["method"] for r in few if r["task"] == task}):
            pts = sorted(
                (r["shots"], r["acc1_mean"], r["acc1_std"])
                for r in few
                if r["task"] == task and r["method"] == method
            )
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                marker="o",
                capsize=3,
                label=method,
            )
        ax.set(xscale="log", xlabel="shots per class", ylabel="top-1 accuracy (%)", title=task)
        shots = sorted({r["shots"] for r in few if r["task"] == task})
        ax.set_xticks(shots, labels=[str(k) for k in shots])
        ax.minorticks_off()
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        paths.append(save_figure(fig, out_dir / f"accuracy_vs_shots_{task}.png"))
        plt.close(fig)
    return paths


def plot_per_class(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Per-class recall at the largest shot count of each few-shot task (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    labelled = [{**r, "method": m} for r, m in zip(records, method_labels(records), strict=True)]
    few = [r for r in labelled if r["protocol"] == "few-shot" and r.get("per_class_recall")]
    for task in sorted({r["task"] for r in few}):
        recs = [r for r in few if r["task"] == task]
        k = max(r["shots"] for r in recs)
        methods = sorted({r["method"] for r in recs if r["shots"] == k})
        names = recs[0]["class_names"]
        fig, ax = plt.subplots(figsize=(max(8, 3 + 0.35 * len(names) * len(methods) ** 0.5), 4))
        width = 0.8 / len(methods)
        for j, method in enumerate(methods):
            per = [r["per_class_recall"] for r in recs if r["shots"] == k and r["method"] == method]
            means = [
                _mean_std([100 * (p[c] if p[c] is not None else math.nan) for p in per])[0]
                for c in range(len(names))
            ]
            ax.bar([c + j * width for c in range(len(names))], means, width, label=method)
        ax.set_xticks(
            [c + 0.4 - width / 2 for c in range(len(names))],
            labels=names,
            rotation=60,
            ha="right",
            fontsize=6,
        )
        ax.set(ylabel="recall (%)", title=f"{task}, {k} shots: per-class accuracy")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        paths.append(save_figure(fig, out_dir / f"per_class_{task}_k{k}.png"))
        plt.close(fig)
    return paths


def save_figure(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip("."))
    return path


def write_report(runs_root: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """report.md, results.csv, PNG plots and CLIP_benchmark JSONs (`clip_benchmark/`) for every
    complete run under `runs_root`."""
    out = Path(out_dir) if out_dir is not None else Path(runs_root) / "report"
    records = load_records(runs_root)
    rows = aggregate(records)
    plots = plot_accuracy_vs_shots(rows, out) + plot_per_class(records, out)
    paths = {"markdown": out / "report.md", "csv": out / "results.csv"}
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, plots) + "\n" + "\n".join(probe_section(records))
    for key, text in (("markdown", md), ("csv", to_csv(rows))):
        write_text_atomic(text, paths[key])
    write_clip_benchmark(records, out / EXPORT_DIR)
    return {**paths, "clip_benchmark": out / EXPORT_DIR, **{p.stem: p for p in plots}}
