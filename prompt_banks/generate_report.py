"""What a generation run did, and the rule that fails a run when too many of its rows failed.

A failed row is stored (so `--retry-failed` can ask it again), but a scheduled run that stored
mostly failures must not look like a success: `check_failed_share` turns a failed share above
the threshold into an error (exit 1 in the CLI, a Failed state in a flow) naming the counts and
the most common reasons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from prompt_banks.errors import UserError

# Failures beyond one row in ten mean the endpoint is broken or overloaded (a healthy server
# fails far less after the retries); below it the run succeeds and says which rows failed.
DEFAULT_MAX_FAILED_SHARE = 0.1

_ATTEMPTS = re.compile(r" \(gave up after \d+ attempts\)$")


def _reason(error: str | None, limit: int) -> str:
    text = _ATTEMPTS.sub("", error or "no reason given")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class GenerateReport:
    domain: str
    classes: int = 0
    rows_written: int = 0
    ok: int = 0
    dropped: int = 0
    failed: int = 0
    calls: int = 0  # attempts of `call`, retries included
    seconds: float = 0.0
    leased_elsewhere: int = 0  # classes found leased by another run (waited for, then rechecked)
    drop_reasons: dict[str, int] = field(default_factory=dict)
    fail_reasons: dict[str, int] = field(default_factory=dict)

    def count(self, row: dict[str, Any]) -> None:
        """Add one stored row (status ok, dropped or failed) to the counts."""
        status = row["status"]
        setattr(self, status, getattr(self, status) + 1)
        if status == "dropped":
            reason = row["error"].split(" (")[0]
            self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1
        elif status == "failed":
            reason = _reason(row["error"], 120)
            self.fail_reasons[reason] = self.fail_reasons.get(reason, 0) + 1

    @property
    def asked(self) -> int:
        """Rows this run asked for (whatever became of them)."""
        return self.ok + self.dropped + self.failed

    @property
    def failed_share(self) -> float:
        return self.failed / self.asked if self.asked else 0.0

    def top_fail_reasons(self, n: int = 3) -> str:
        common = sorted(self.fail_reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        more = len(self.fail_reasons) - len(common)
        text = "; ".join(f"{count} x {reason}" for reason, count in common)
        return text + (f"; and {more} other reasons" if more > 0 else "")

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.drop_reasons.items())) or "none"
        text = (
            f"{self.domain}: {self.classes} classes, {self.rows_written} rows written "
            f"({self.ok} ok, {self.dropped} dropped, {self.failed} failed), {self.calls} calls, "
            f"{self.seconds:.1f} s; dropped because: {reasons}"
        )
        if self.failed:
            text += f"; failed because: {self.top_fail_reasons()}"
        if self.leased_elsewhere:
            text += (
                f"; {self.leased_elsewhere} classes were leased by another run (rechecked after)"
            )
        return text


class TooManyFailed(UserError):
    """The run finished, but more of its rows failed than the threshold allows."""

    exit_code = 1  # 2 says nothing could run; 1 says it ran and must be looked at


def check_failed_share(
    report: GenerateReport, max_share: float, *, again: str, setting: str = "--max-failed-share"
) -> None:
    """Raise TooManyFailed when the share of this run's rows that failed exceeds `max_share`.
    `again` says how to ask the failed rows again, `setting` names the threshold (a CLI flag,
    or a flow parameter)."""
    if report.failed_share <= max_share:
        return
    raise TooManyFailed(
        f"{report.domain}: {report.failed} of {report.asked} rows failed "
        f"({report.failed_share:.0%}, more than {setting} {max_share:g}): "
        f"{report.top_fail_reasons()}; the rows are stored as failed, {again} asks them again"
    )
