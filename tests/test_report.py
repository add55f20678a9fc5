"""Aggregate tables (mean/std over seeds, the base-to-new Average row) and plots."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from aape_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from aape.protocols import RESULT_NAME, write_json_atomic
from aape.report import aggregate, markdown, to_csv, write_report


def _rec(protocol: str, task: str, method: str, shots: int, seed: int, **metrics) -> dict:
    return {
        "protocol": protocol,
        "task": task,
        "method": method,
        "shots": shots,
        "seed": seed,
        "health": {"teacher_acc": 0.5, "student_acc": 0.25},
        "complete": True,
        "class_names": ["a", "b"],
        **metrics,
    }


def _write(root: Path, recs: list[dict]) -> None:
    for i, r in enumerate(recs):
        write_json_atomic(
            r, root / r["protocol"] / r["task"] / r["method"] / f"run{i}" / RESULT_NAME
        )


def test_mean_and_std_over_seeds_and_average_row() -> None:
    recs = [
        _rec("few-shot", "t", "aape", 4, 1, acc1=0.6, acc5=1.0, mean_per_class_recall=0.6),
        _rec("few-shot", "t", "aape", 4, 2, acc1=0.8, acc5=1.0, mean_per_class_recall=0.8),
        _rec("base-to-new", "t1", "aape", 16, 1, base=1.0, new=0.0, H=0.0),
        _rec("base-to-new", "t2", "aape", 16, 1, base=0.0, new=1.0, H=0.0),
    ]
    recs.append(
        _rec("cross-dataset", "src", "aape", 16, 1, acc1=0.9, targets={"tgt": {"acc1": 0.4}})
    )
    rows = aggregate(recs)
    cross = next(r for r in rows if r["protocol"] == "cross-dataset")
    assert cross["acc1@tgt_mean"] == pytest.approx(40.0)
    few = next(r for r in rows if r["protocol"] == "few-shot")
    assert few["acc1_mean"] == pytest.approx(70.0) and few["acc1_std"] == pytest.approx(
        14.1421, 1e-3
    )
    assert few["seeds"] == 2 and few["teacher_acc"] == pytest.approx(50.0)
    avg = next(r for r in rows if r["task"] == "Average")
    assert avg["base_mean"] == 50.0 and avg["new_mean"] == 50.0 and avg["H_mean"] == 50.0
    md = markdown(rows)
    assert "| t | aape | 4 | 2 | 70.00 ± 14.14 |" in md and "## base-to-new" in md
    table = list(csv.DictReader(io.StringIO(to_csv(rows))))
    few_row = next(t for t in table if t["protocol"] == "few-shot")
    assert len(table) == len(rows) and float(few_row["acc1_mean"]) == pytest.approx(70.0)


def test_write_report_makes_markdown_csv_and_pngs(tmp_path: Path) -> None:
    recs = [
        _rec(
            "few-shot",
            "t",
            m,
            k,
            s,
            acc1=0.1 * k / 16 + 0.01 * s,
            acc5=1.0,
            mean_per_class_recall=0.5,
            per_class_recall=[0.5, None],
        )
        for m in ("aape", "zeroshot")
        for k in (1, 2, 4)
        for s in (1, 2)
    ]
    _write(tmp_path / "runs", recs)
    paths = write_report(tmp_path / "runs", tmp_path / "rep")
    assert paths["markdown"].read_text().count("| t |") == 6
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert pngs == ["accuracy_vs_shots_t.png", "per_class_t_k4.png"]
    assert all((tmp_path / "rep" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_two_banks_or_two_settings_of_one_method_are_two_rows() -> None:
    def rec(seed: int, domain: str | None, ident: dict) -> dict:
        bank = {"domain": domain, "fingerprint": "f"} if domain else None
        return _rec("few-shot", "t", "cupl", 4, seed, acc1=0.1 * seed, bank=bank, identity=ident)

    recs = [rec(s, "a", {"b": "a"}) for s in (1, 2)] + [rec(3, "b", {"b": "b"})]
    recs += [rec(1, None, {"lr": 1}), rec(2, None, {"lr": 2})]  # same label, two identities
    rows = {r["method"]: r for r in aggregate(recs)}
    hashes = [m for m in rows if m.startswith("cupl-")]
    assert set(rows) - set(hashes) == {"cupl@a", "cupl@b"} and len(hashes) == 2
    assert rows["cupl@a"]["seeds"] == 2 and rows["cupl@a"]["acc1_mean"] == pytest.approx(15.0)
    assert rows["cupl@b"]["seeds"] == 1


def test_the_report_says_what_the_linear_probe_swept(tmp_path: Path) -> None:
    probe = {"grid": [0.01, 1.0, 100.0], "selected_on": "val", "C": 1.0,
             "tried": [[0.01, 0.5], [1.0, 0.75], [100.0, 0.5]], "solver": "lbfgs"}  # fmt: skip
    rec = _rec("few-shot", "t", "linear_probe", 4, 1, acc1=0.7, probe=probe)
    _write(tmp_path, [rec, _rec("few-shot", "t", "zeroshot", 4, 1, acc1=0.5)])
    md = Path(write_report(tmp_path)["markdown"]).read_text(encoding="utf-8")
    assert (
        "- C grid [0.01, 1.0, 100.0], then bisections in log10 C around the best; chosen on: val"
        in md
    )
    assert "| few-shot | t | 4 | 1 | 3 | 1 | 75.00 |" in md
