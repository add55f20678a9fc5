"""Generating a prompt bank: every (class, question, sample) asked once, cleaned, stored.

How it stays correct when runs are killed, retried or extended:
- Each sample is a row with a key (class, question, sample index, model, sampling params). A key
  already stored as ok or dropped is never asked again; a failed one only with `retry_failed`.
- A class is worked in rounds: the missing samples first, then (bounded) extra samples when
  cleaning dropped some. Each round is cleaned as a whole, in (question, sample) order, and its
  rows reach the store together, so a restart sees either all of a round or none of it. The next
  round is a pure function of what is stored; a killed run, restarted, ends with the same rows.
- Requests run on a thread pool of `concurrency` workers. `call` (by default `backend.complete`)
  is the single attempt a caller may wrap (a global rate limit, say); retries with exponential
  backoff and jitter wrap it here. 401/403/404 stop the run at once.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from prompt_banks import snapshots
from prompt_banks.backends.base import (
    CompletionRequest,
    FatalLLMError,
    LLMBackend,
    LLMError,
    TransientLLMError,
)
from prompt_banks.cleaning import Deduplicator, clean_answer
from prompt_banks.schema import description_row_key
from prompt_banks.spec import ClassSpec, DomainSpec, render_question
from prompt_banks.store import BankStore

log = logging.getLogger(__name__)

Call = Callable[[CompletionRequest], list[str]]
# How n samples map to rows, recorded in llm_params: the seed of sample i is seed + i.
SAMPLING = "one row per sample; sample i uses seed + i"


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry number `attempt` (0-based): the server's Retry-After when it
        gave one (capped), else exponential backoff with equal jitter."""
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        base = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return base / 2 + random.uniform(0, base / 2)


@dataclass(frozen=True)
class WorkItem:
    """One request: consecutive samples of one (class, question)."""

    class_name: str  # canonical
    question_index: int
    question: str
    sample_indices: tuple[int, ...]
    row_keys: tuple[str, ...]
    llm_params: str
    request: CompletionRequest


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
    drop_reasons: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.drop_reasons.items())) or "none"
        return (
            f"{self.domain}: {self.classes} classes, {self.rows_written} rows written "
            f"({self.ok} ok, {self.dropped} dropped, {self.failed} failed), {self.calls} calls, "
            f"{self.seconds:.1f} s; dropped because: {reasons}"
        )


@dataclass
class _Outcome:
    item: WorkItem
    texts: list[str] | None
    error: str | None
    attempts: int


def class_hint(cls: ClassSpec) -> str:
    """What the spec adds to a question about this class: its aliases and its hint."""
    parts = []
    if cls.aliases:
        parts.append("also called " + ", ".join(cls.aliases))
    if cls.hint:
        parts.append(cls.hint)
    return "; ".join(parts)


def user_message(cls: ClassSpec, question: str) -> str:
    """The message sent for a rendered question: "How can you identify a crane? (the bird)"."""
    hint = class_hint(cls)
    return f"{question} ({hint})" if hint else question


class _ClassPlanner:
    """Row keys and rounds of one class, decided from the known status of each key."""

    def __init__(self, spec: DomainSpec, cls: ClassSpec, model_id: str, key_params: dict[str, Any]):
        self.spec, self.cls = spec, cls
        self.model_id = model_id
        self.questions = [render_question(q, cls.name) for q in spec.questions]
        params: dict[str, Any] = {
            "temperature": spec.temperature,
            "max_tokens": spec.max_tokens,
            "stop": list(spec.stop),
            "seed": spec.seed,
            "sampling": SAMPLING,
            "system_prompt": spec.system_prompt,
            **key_params,
        }
        hint = self._hint()
        if hint:
            params["hint"] = hint
        self.llm_params = json.dumps(params, sort_keys=True, ensure_ascii=False)
        self.cap = spec.samples_per_question + spec.max_extra_samples_per_question
        self._keys = [
            [self._key(qi, i) for i in range(self.cap)] for qi in range(len(self.questions))
        ]

    def _hint(self) -> str:
        return class_hint(self.cls)

    def _key(self, qi: int, i: int) -> str:
        return description_row_key(
            domain=self.spec.domain,
            class_name=self.cls.canonical,
            source="llm",
            question=self.questions[qi],
            sample_index=i,
            llm_model=self.model_id,
            llm_params=self.llm_params,
        )

    def key(self, qi: int, i: int) -> str:
        return self._keys[qi][i]

    def first_round(self, status: dict[str, str], retry_failed: bool) -> list[tuple[int, int]]:
        if retry_failed:
            return [
                (qi, i)
                for qi in range(len(self.questions))
                for i in range(self.cap)
                if status.get(self._keys[qi][i]) == "failed"
            ]
        n = self.spec.samples_per_question
        return [
            (qi, i)
            for qi in range(len(self.questions))
            for i in range(n)
            if self._keys[qi][i] not in status
        ]

    def top_up(self, status: dict[str, str]) -> list[tuple[int, int]]:
        """Extra samples for answers that cleaning dropped (failures are retried, not replaced),
        spread over the questions that have the fewest samples, at most `cap` per question."""
        counts = {"ok": 0, "failed": 0}
        free: list[list[int]] = []
        for row in self._keys:
            free.append([i for i, k in enumerate(row) if k not in status])
            for k in row:
                if status.get(k) in counts:
                    counts[status[k]] += 1
        shortfall = self.spec.target_per_class - counts["ok"] - counts["failed"]
        picks: list[tuple[int, int]] = []
        used = [self.cap - len(f) for f in free]
        for _ in range(max(0, shortfall)):
            open_q = [qi for qi in range(len(free)) if free[qi]]
            if not open_q:
                break
            qi = min(open_q, key=lambda q: (used[q], q))
            picks.append((qi, free[qi].pop(0)))
            used[qi] += 1
        return picks

    def items(self, picks: list[tuple[int, int]], max_n: int) -> list[WorkItem]:
        """Requests for the picks: runs of consecutive sample indices, at most max_n each."""
        by_q: dict[int, list[int]] = {}
        for qi, i in sorted(picks):
            by_q.setdefault(qi, []).append(i)
        items = []
        for qi, indices in by_q.items():
            runs: list[list[int]] = []
            for i in indices:
                if runs and i == runs[-1][-1] + 1 and len(runs[-1]) < max_n:
                    runs[-1].append(i)
                else:
                    runs.append([i])
            for run in runs:
                user = user_message(self.cls, self.questions[qi])
                items.append(
                    WorkItem(
                        class_name=self.cls.canonical,
                        question_index=qi,
                        question=self.questions[qi],
                        sample_indices=tuple(run),
                        row_keys=tuple(self._keys[qi][i] for i in run),
                        llm_params=self.llm_params,
                        request=CompletionRequest(
                            user=user,
                            system=self.spec.system_prompt or None,
                            n=len(run),
                            seed=self.spec.seed + run[0],
                            temperature=self.spec.temperature,
                            max_tokens=self.spec.max_tokens,
                            stop=self.spec.stop,
                        ),
                    )
                )
        return items


def _stored_state(store: BankStore, domain: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Status of every stored key of the domain, and the clean texts of its ok rows by class."""
    # The store's view keeps the newest row per key, so a retried failure reads as its outcome.
    status: dict[str, str] = {}
    ok_texts: dict[str, list[str]] = {}
    with store.connect() as con:
        rows = con.execute(
            "SELECT row_key, class_name, status, clean_text FROM descriptions WHERE domain = ?",
            [domain],
        ).fetchall()
    for key, class_name, st, text in rows:
        status[key] = st
        if st == "ok" and text:
            ok_texts.setdefault(class_name, []).append(text)
    return status, ok_texts


class _Stopped(Exception):
    """The run is stopping (a fatal error elsewhere): this item's round is abandoned unstored."""


def _attempt(call: Call, item: WorkItem, policy: RetryPolicy, stop: threading.Event) -> _Outcome:
    """Run one work item with retries; a FatalLLMError propagates (it stops the run)."""
    attempts = 0
    while True:
        if stop.is_set():
            raise _Stopped
        attempts += 1
        try:
            texts = call(item.request)
            if len(texts) != item.request.n:
                raise LLMError(f"backend returned {len(texts)} answers for n={item.request.n}")
            return _Outcome(item, list(texts), None, attempts)
        except FatalLLMError:
            stop.set()  # the other workers send nothing more
            raise
        except TransientLLMError as exc:
            if attempts > policy.max_retries:
                return _Outcome(item, None, f"{exc} (gave up after {attempts} attempts)", attempts)
            delay = policy.delay(attempts - 1, exc.retry_after)
            log.debug("retrying %s in %.1fs: %s", item.question, delay, exc)
            stop.wait(delay)
        except LLMError as exc:
            return _Outcome(item, None, str(exc), attempts)


def _round_rows(
    spec: DomainSpec, cls: ClassSpec, model_id: str, outcomes: list[_Outcome], dedup: Deduplicator
) -> list[dict[str, Any]]:
    """Rows of one finished round, cleaned in (question, sample) order so that the kept one of
    two equal answers never depends on which request came back first."""
    samples = []
    for o in outcomes:
        for k, (i, key) in enumerate(zip(o.item.sample_indices, o.item.row_keys, strict=True)):
            samples.append(
                (o.item.question_index, i, key, o, None if o.texts is None else o.texts[k])
            )
    rows = []
    for _qi, i, key, o, text in sorted(samples, key=lambda s: (s[0], s[1])):
        row: dict[str, Any] = {
            "row_key": key,
            "domain": spec.domain,
            "class_name": cls.canonical,
            "raw_class_name": cls.name,
            "source": "llm",
            "question": o.item.question,
            "sample_index": i,
            "llm_model": model_id,
            "llm_params": o.item.llm_params,
            "raw_text": text,
            "clean_text": None,
            "status": "failed",
            "error": o.error,
        }
        if text is not None:
            cleaned = clean_answer(text, question=o.item.question, min_words=spec.min_words)
            if cleaned.text is not None and dedup.is_duplicate(cleaned.text):
                row.update(status="dropped", error="duplicate within the class")
            elif cleaned.text is None:
                row.update(status="dropped", error=cleaned.reason)
            else:
                row.update(status="ok", clean_text=cleaned.text, error=None)
        rows.append(row)
    return rows


def generate_bank(
    spec: DomainSpec,
    store: BankStore,
    backend: LLMBackend,
    *,
    concurrency: int,
    retry_failed: bool = False,
    limit_classes: int | None = None,
    progress: bool = True,
    call: Call | None = None,
    retry: RetryPolicy | None = None,
    flush_rows: int = 256,
    flush_seconds: float = 10.0,
) -> GenerateReport:
    """Ask `backend` for every missing description of `spec` and store the rows in `store`."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    call = call or backend.complete
    retry = retry or RetryPolicy(spec.llm.max_retries, spec.llm.backoff_s, spec.llm.max_backoff_s)
    classes = spec.classes[:limit_classes] if limit_classes else spec.classes
    report = GenerateReport(domain=spec.domain, classes=len(classes))
    start = time.monotonic()
    status, ok_texts = _stored_state(store, spec.domain)
    planners = {
        c.canonical: _ClassPlanner(spec, c, backend.model_id, backend.key_params) for c in classes
    }
    dedups: dict[str, Deduplicator] = {}
    pending: dict[str, list[_Outcome]] = {}
    outstanding: dict[str, int] = {}
    buffer: list[dict[str, Any]] = []
    last_flush = time.monotonic()
    stop = threading.Event()
    bar = tqdm(total=len(classes), desc=spec.domain, unit="class", disable=not progress)

    def flush() -> None:
        nonlocal last_flush
        if buffer:
            report.rows_written += store.append_descriptions(buffer)
            buffer.clear()
        last_flush = time.monotonic()

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llm")
    futures: dict[Future[_Outcome], str] = {}

    def start_round(name: str, picks: list[tuple[int, int]]) -> bool:
        items = planners[name].items(picks, max(1, backend.max_n))
        if not items:
            return False
        pending[name], outstanding[name] = [], len(items)
        for item in items:
            futures[pool.submit(_attempt, call, item, retry, stop)] = name
        return True

    def class_finished() -> None:
        bar.update(1)
        rate = report.ok / max(time.monotonic() - start, 1e-9)
        bar.set_postfix(rows_per_s=f"{rate:.2f}", failed=report.failed, refresh=False)

    try:
        for cls in classes:
            planner = planners[cls.canonical]
            picks = planner.first_round(status, retry_failed)
            if not picks and not retry_failed:  # a run killed between two rounds of the class
                picks = planner.top_up(status)
            if not start_round(cls.canonical, picks):
                class_finished()
        while futures:
            done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
            for fut in done:
                name = futures.pop(fut)
                try:
                    outcome = fut.result()  # a FatalLLMError surfaces here
                except _Stopped:
                    continue
                report.calls += outcome.attempts
                pending[name].append(outcome)
                outstanding[name] -= 1
                if outstanding[name]:
                    continue
                cls = planners[name].cls
                dedup = dedups.setdefault(name, Deduplicator(ok_texts.get(name, [])))
                rows = _round_rows(spec, cls, backend.model_id, pending.pop(name), dedup)
                for row in rows:
                    status[row["row_key"]] = row["status"]
                    setattr(report, row["status"], getattr(report, row["status"]) + 1)
                    if row["status"] == "dropped":
                        reason = row["error"].split(" (")[0]
                        report.drop_reasons[reason] = report.drop_reasons.get(reason, 0) + 1
                buffer.extend(rows)
                if not start_round(name, planners[name].top_up(status)):
                    class_finished()
            if len(buffer) >= flush_rows or time.monotonic() - last_flush >= flush_seconds:
                flush()
        flush()
    except BaseException:
        # Fatal error or interrupt: keep every finished round, abandon the rest.
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        flush()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
        report.seconds = time.monotonic() - start
    if report.rows_written:
        snapshots.take(store, spec.domain)  # the domain's new state, for `aape bank history`
    return report
