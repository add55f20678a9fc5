"""The simulation study's statistics (means, paired differences) and its verdicts on the
paper's claims."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from aape.study_plan import StudyPlan
from aape.study_runs import Row

# -- statistics -------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def select(rows: list[Row], **where: Any) -> list[Row]:
    return [r for r in rows if all(getattr(r, k) == v for k, v in where.items())]


@dataclass
class Paired:
    """A - B over the seeds both ran, in accuracy points."""

    metric: str
    mean: float
    std: float
    wins: int
    n: int

    def text(self) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "n/a"
        return f"{100 * self.mean:+.2f} ± {100 * self.std:.2f} ({self.wins}/{self.n} seeds A > B)"


def paired(a: list[Row], b: list[Row], metric: str) -> Paired:
    by_seed = {r.seed: getattr(r, metric) for r in b}
    diffs = [getattr(r, metric) - by_seed[r.seed] for r in a if r.seed in by_seed]
    diffs = [d for d in diffs if not math.isnan(d)]
    m, s = mean_std(diffs)
    return Paired(metric, m, s, sum(d > 0 for d in diffs), len(diffs))


def rows_of(rows: list[Row], experiment: str, variant: str, shots: int | None = None) -> list[Row]:
    out = select(rows, experiment=experiment, variant=variant)
    return [r for r in out if shots is None or r.shots == shots]


# -- claims -------------------------------------------------------------------------------


@dataclass
class Claim:
    claim: str
    verdict: str  # holds | fails | partly | not testable
    evidence: str


def _m(rows: list[Row], metric: str) -> float:
    return mean_std([getattr(r, metric) for r in rows])[0]


def _p(v: float) -> str:
    return f"{100 * v:.2f}"


def lambda0(rows: list[Row], shots: int) -> list[Row]:
    """AAPE lambda 0 at `shots`: world-independent (see `_experiments`), run in "curves"."""
    return rows_of(rows, "curves", "aape_l0", shots)


def check_claims(rows: list[Row], plan: StudyPlan) -> list[Claim]:
    k16, k = plan.max_shots, plan.ablation_shots
    kr = k
    claims = []
    # 1. L_distill improves base and new accuracy on every dataset.
    parts, ups = [], []
    for exp in ("prompts-5", "small-llm"):
        a, b = rows_of(rows, exp, "aape", k), lambda0(rows, k)
        if a and b:
            pb, pn = paired(a, b, "base"), paired(a, b, "new")
            parts.append(f"{exp} ({k} shots): base {pb.text()}, new {pn.text()}")
            ups.append(pb.mean > 0 and pn.mean > 0)
    for shots in sorted({r.shots for r in rows if r.experiment == "curves"}):
        a, b = rows_of(rows, "curves", "aape", shots), lambda0(rows, shots)
        if a and b:
            pb, pn = paired(a, b, "base"), paired(a, b, "new")
            parts.append(f"normal, {shots} shots: base {pb.text()}, new {pn.text()}")
            ups.append(pb.mean > 0 and pn.mean > 0)
    a, b = rows_of(rows, "recipes", "aape_sgd", kr), rows_of(rows, "recipes", "aape_l0_sgd", kr)
    if a and b:
        parts.append(
            f"SGD recipe ({kr} shots): base {paired(a, b, 'base').text()}, new "
            f"{paired(a, b, 'new').text()}"
        )
    verdict = (
        "holds" if ups and all(ups) else f"fails ({sum(ups)} of {len(ups)} settings improve both)"
    )
    claims.append(
        Claim(
            "L_distill improves base and new accuracy on every dataset (AAPE - AAPE lambda 0, "
            "paired by seed, AdamW; each normal-type world and shot count counts as a dataset)",
            verdict,
            "; ".join(parts),
        )
    )
    # 2. AAPE with 1 shot beats CoCoOp with 16.
    one, l0_16, lp_16 = (
        rows_of(rows, "curves", "aape", 1),
        lambda0(rows, k16),
        rows_of(rows, "curves", "linear_probe", k16),
    )
    if one and l0_16:
        h1, h16 = _m(one, "H"), _m(l0_16, "H")
        claims.append(
            Claim(
                "AAPE with 1 shot beats CoCoOp with 16. Not testable as stated (no CoCoOp in the "
                "harness); proxy: AAPE at 1 shot vs AAPE lambda 0 (an input-conditional head "
                f"trained without language) at {k16}",
                "holds (proxy)" if h1 > h16 else "fails (proxy)",
                f"H {_p(h1)} vs {_p(h16)}; base {_p(_m(one, 'base'))} vs {_p(_m(l0_16, 'base'))} "
                f"(linear probe at {k16}: {_p(_m(lp_16, 'base'))}); new {_p(_m(one, 'new'))} vs "
                f"{_p(_m(l0_16, 'new'))}",
            )
        )
    # 3. AAPE scales better than CuPL with more prompts per class and with a larger LLM.
    parts, better = [], []
    pts = [
        (lab, rows_of(rows, e, "aape", k), rows_of(rows, e, "cupl", k))
        for e, lab in (("prompts-5", "5"), ("curves", "20-90"))
    ]
    pts = [p for p in pts if p[1] and p[2]]
    if len(pts) >= 2:
        parts += [f"n={lab}: AAPE H {_p(_m(a, 'H'))}, CuPL H {_p(_m(c, 'H'))}" for lab, a, c in pts]
        ga, gc = (
            _m(pts[-1][1], "H") - _m(pts[0][1], "H"),
            _m(pts[-1][2], "H") - _m(pts[0][2], "H"),
        )
        parts.append(
            f"gain n={pts[0][0]} -> {pts[-1][0]}: AAPE {100 * ga:+.2f}, CuPL {100 * gc:+.2f}"
        )
        better.append(ga > gc)
    sa, sc = rows_of(rows, "small-llm", "aape", k), rows_of(rows, "small-llm", "cupl", k)
    ba, bc = rows_of(rows, "curves", "aape", k), rows_of(rows, "curves", "cupl", k)
    if sa and ba and sc and bc:
        ga, gc = _m(ba, "H") - _m(sa, "H"), _m(bc, "H") - _m(sc, "H")
        parts.append(
            f"small -> large LLM: AAPE H {_p(_m(sa, 'H'))} -> {_p(_m(ba, 'H'))} "
            f"({100 * ga:+.2f}), CuPL H {_p(_m(sc, 'H'))} -> {_p(_m(bc, 'H'))} ({100 * gc:+.2f})"
        )
        better.append(ga > gc)
    if better:
        verdict = "holds" if all(better) else "fails" if not any(better) else "partly"
        claims.append(
            Claim(
                "AAPE scales better than CuPL with more prompts per class and with a larger LLM "
                f"(gain in H at {k} shots)",
                verdict,
                "; ".join(parts),
            )
        )
    # 4. attention > MLP > mean > random.
    order = [("attention", rows_of(rows, "curves", "aape", k))] + [
        (n, rows_of(rows, "ablations", f"aape_{n}", k)) for n in ("mlp", "mean", "random")
    ]
    if all(r for _, r in order):
        hs = [_m(r, "H") for _, r in order]
        steps = [
            f"{order[i][0]} - {order[i + 1][0]}: H "
            f"{paired(order[i][1], order[i + 1][1], 'H').text()}"
            for i in range(3)
        ]
        claims.append(
            Claim(
                f"Aggregation: attention > MLP > mean > random ({k} shots)",
                "holds" if all(hs[i] > hs[i + 1] for i in range(3)) else "fails",
                ", ".join(f"{n} H {_p(h)}" for (n, _), h in zip(order, hs, strict=True))
                + "; paired: "
                + "; ".join(steps),
            )
        )
    # 5. (the control) Whatever AAPE gains from language vanishes without visual language.
    ca, l0 = rows_of(rows, "control", "aape", k), lambda0(rows, k)
    cc, cz = rows_of(rows, "control", "cupl", k), rows_of(rows, "control", "zeroshot", k)
    na = rows_of(rows, "curves", "aape", k)
    if ca and l0 and cc and cz and na:
        gain_c = paired(ca, l0, "H")
        gain_n = paired(na, l0, "H")
        vanish = (
            gain_c.mean < max(0.5 * gain_n.mean, 0.005) if not math.isnan(gain_n.mean) else False
        )
        cupl_drop = paired(cc, cz, "H").mean <= 0
        if vanish and gain_n.mean <= 0:
            verdict = "holds, vacuously for AAPE (no gain in the normal world either)"
        else:
            verdict = "holds" if vanish else "fails"
        if not cupl_drop:
            verdict += "; CuPL still gains in the control world"
        claims.append(
            Claim(
                "Control: whatever AAPE gains from language vanishes when the descriptions carry "
                "no visual information",
                verdict,
                f"AAPE - lambda 0, H: control {gain_c.text()} vs normal {gain_n.text()}; CuPL - "
                f"zero-shot, H: control {paired(cc, cz, 'H').text()}",
            )
        )
    return claims
