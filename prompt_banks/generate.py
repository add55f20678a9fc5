"""Generating a prompt bank: every (class, question, sample) asked once, cleaned, stored.

How it stays correct when runs are killed, retried, extended or run twice at once:
- Each sample is a row with a key (class, question, sample index, model, sampling params). A key
  already stored as ok or dropped is never asked again; a failed one only with `retry_failed`.
- A class is worked in rounds (prompt_banks.generate_plan): the missing samples first, then
  (bounded) extra samples when cleaning dropped some. Each round is cleaned as a whole, in
  (question, sample) order, and its rows reach the store together, so a restart sees either all
  of a round or none of it. The next round is a pure function of what is stored; a killed run,
  restarted, ends with the same rows.
- A class is worked under a lease (prompt_banks.leases) kept in `<store>/leases/<domain>`, held
  until its rows are stored: a second run on the domain skips the classes the first one holds,
  and rechecks each in the store once its lease is released or has expired (a killed run).
- Before the first request the backend's preflight fails fast when nothing can answer.
- Requests run on a thread pool of `concurrency` workers. `call` (by default `backend.complete`)
  is the single attempt a caller may wrap (a global rate limit, say); retries with exponential
  backoff and jitter wrap it here. 401/403/404 stop the run at once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from prompt_banks.backends.base import (
    CompletionRequest,
    FatalLLMError,
    LLMBackend,
    LLMError,
    TransientLLMError,
)
from prompt_banks.cleaning import Deduplicator, clean_answer
from prompt_banks.errors import UserError
from prompt_banks.generate_plan import ClassPlanner, WorkItem
from prompt_banks.generate_report import GenerateReport
from prompt_banks.leases import Leases
from prompt_banks.paths import join
from prompt_banks.spec import ClassSpec, DomainSpec
from prompt_banks.store import BankStore

log = logging.getLogger(__name__)

Call = Callable[[CompletionRequest], list[str]]
# A run killed with -9 holds its classes this long; a live run renews its leases every third.
DEFAULT_LEASE_TTL_S = 60.0


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


@dataclass
class _Outcome:
    item: WorkItem
    texts: list[str] | None
    error: str | None
    attempts: int


def _stored_state(
    store: BankStore, domain: str, class_name: str | None = None
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Status of every stored key of the domain (or of one class of it), and the clean texts of
    its ok rows by class."""
    # The store's view keeps the newest row per key, so a retried failure reads as its outcome.
    sql = "SELECT row_key, class_name, status, clean_text FROM descriptions WHERE domain = ?"
    params = [domain]
    if class_name is not None:
        sql += " AND class_name = ?"
        params.append(class_name)
    status: dict[str, str] = {}
    ok_texts: dict[str, list[str]] = {}
    with store.connect() as con:
        rows = con.execute(sql, params).fetchall()
    for key, name, st, text in rows:
        status[key] = st
        if st == "ok" and text:
            ok_texts.setdefault(name, []).append(text)
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


class _Run:
    """One call of generate_bank: the classes leased and in flight, their rounds, the rows."""

    def __init__(
        self,
        spec: DomainSpec,
        store: BankStore,
        backend: LLMBackend,
        call: Call,
        retry: RetryPolicy,
        concurrency: int,
        retry_failed: bool,
    ) -> None:
        self.spec, self.store, self.backend = spec, store, backend
        self.call, self.retry, self.retry_failed = call, retry, retry_failed
        self.concurrency = concurrency
        # Classes leased at once: enough to keep every worker busy, few enough to leave the
        # other classes to a second run.
        self.window = 2 * concurrency
        self.stop = threading.Event()
        self.futures: dict[Future[_Outcome], str] = {}
        self.pending: dict[str, list[_Outcome]] = {}
        self.outstanding: dict[str, int] = {}
        self.dedups: dict[str, Deduplicator] = {}
        self.active: set[str] = set()  # leased, with a round in flight
        self.unreleased: list[str] = []  # finished; leased until their rows are stored
        self.busy_until: dict[str, float] = {}  # leased by another run: look again after this
        self.buffer: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()

    def go(
        self,
        classes: tuple[ClassSpec, ...],
        *,
        progress: bool,
        flush_rows: int,
        flush_seconds: float,
        lease_ttl_s: float,
    ) -> GenerateReport:
        spec, backend = self.spec, self.backend
        self.report = report = GenerateReport(domain=spec.domain, classes=len(classes))
        self.start = time.monotonic()
        self.status, self.ok_texts = _stored_state(self.store, spec.domain)
        self.planners = {
            c.canonical: ClassPlanner(spec, c, backend.model_id, backend.key_params)
            for c in classes
        }
        waiting = [n for n, p in self.planners.items() if p.opening(self.status, self.retry_failed)]
        if waiting:
            backend.preflight()
        self.leases = Leases(lease_root(self.store, spec.domain), ttl_s=lease_ttl_s)
        self.tick = min(1.0, lease_ttl_s / 6)
        self.bar = tqdm(
            total=len(classes),
            initial=len(classes) - len(waiting),
            desc=spec.domain,
            unit="class",
            disable=not progress,
        )
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="llm")
        try:
            while waiting or self.futures:
                self._take(waiting)
                if not self.futures:
                    self._flush()  # and release what this run finished
                    if waiting:  # every class left is leased by another run
                        self.stop.wait(self.tick)
                    continue
                done, _ = wait(list(self.futures), timeout=self.tick, return_when=FIRST_COMPLETED)
                for fut in done:
                    self._collect(fut)
                self.leases.renew_due()
                if len(self.buffer) >= flush_rows or time.monotonic() - self.last_flush >= (
                    flush_seconds
                ):
                    self._flush()
            self._flush()
        except BaseException:
            # Fatal error or interrupt: keep every finished round, abandon the rest.
            self.stop.set()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self._flush()
            raise
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            try:
                self.leases.release_all()
            except (OSError, UserError) as exc:  # unreleased leases expire by themselves
                log.warning("leases: cannot release (%s); they expire in %g s", exc, lease_ttl_s)
            self.bar.close()
            report.seconds = time.monotonic() - self.start
            report.leased_elsewhere = len(self.busy_until)
        return report

    def _take(self, waiting: list[str]) -> None:
        """Lease classes of `waiting` and start their first rounds, up to `window` in flight."""
        now = time.monotonic()
        for name in list(waiting):
            if len(self.active) >= self.window:
                return
            if self.busy_until.get(name, 0.0) > now:
                continue
            planner = self.planners[name]
            generation = self.leases.take(planner.lease_name, f"{self.spec.domain}/{name}")
            if generation is None:
                self.busy_until[name] = now + self.tick
                continue
            waiting.remove(name)
            if generation > 0:  # leased before: another run may have stored rows since
                status, ok_texts = _stored_state(self.store, self.spec.domain, name)
                self.status.update(status)
                self.ok_texts[name] = ok_texts.get(name, [])
            if self._start_round(name, planner.opening(self.status, self.retry_failed)):
                self.active.add(name)
            else:  # another run did it all
                self.leases.release(planner.lease_name)
                self._class_done()

    def _start_round(self, name: str, picks: list[tuple[int, int]]) -> bool:
        items = self.planners[name].items(picks, max(1, self.backend.max_n))
        if not items:
            return False
        self.pending[name], self.outstanding[name] = [], len(items)
        for item in items:
            fut = self.pool.submit(_attempt, self.call, item, self.retry, self.stop)
            self.futures[fut] = name
        return True

    def _collect(self, fut: Future[_Outcome]) -> None:
        name = self.futures.pop(fut)
        try:
            outcome = fut.result()  # a FatalLLMError surfaces here
        except _Stopped:
            return
        self.report.calls += outcome.attempts
        self.pending[name].append(outcome)
        self.outstanding[name] -= 1
        if self.outstanding[name]:
            return
        planner = self.planners[name]
        dedup = self.dedups.setdefault(name, Deduplicator(self.ok_texts.get(name, [])))
        outcomes = self.pending.pop(name)
        rows = _round_rows(self.spec, planner.cls, self.backend.model_id, outcomes, dedup)
        for row in rows:
            self.status[row["row_key"]] = row["status"]
            self.report.count(row)
        self.buffer.extend(rows)
        if not self._start_round(name, planner.top_up(self.status)):
            self.active.discard(name)
            self.unreleased.append(name)
            self._class_done()

    def _class_done(self) -> None:
        self.bar.update(1)
        rate = self.report.ok / max(time.monotonic() - self.start, 1e-9)
        self.bar.set_postfix(rows_per_s=f"{rate:.2f}", failed=self.report.failed, refresh=False)

    def _flush(self) -> None:
        """Store the buffered rows, then release the classes they finish."""
        if self.buffer:
            self.report.rows_written += self.store.append_descriptions(self.buffer)
            self.buffer.clear()
        for name in self.unreleased:
            self.leases.release(self.planners[name].lease_name)
        self.unreleased.clear()
        self.last_flush = time.monotonic()


def lease_root(store: BankStore, domain: str) -> Any:
    """Where the class leases of `domain` live in `store` (a folder or a URL)."""
    return join(store.root, "leases", domain)


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
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
) -> GenerateReport:
    """Ask `backend` for every missing description of `spec` and store the rows in `store`.

    When anything is missing, `backend.preflight()` runs first: a UserError before any request
    when nothing can answer. Other runs on the same store and domain share the work (leases)."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    retry = retry or RetryPolicy(spec.llm.max_retries, spec.llm.backoff_s, spec.llm.max_backoff_s)
    run = _Run(spec, store, backend, call or backend.complete, retry, concurrency, retry_failed)
    return run.go(
        spec.classes[:limit_classes] if limit_classes else spec.classes,
        progress=progress,
        flush_rows=flush_rows,
        flush_seconds=flush_seconds,
        lease_ttl_s=lease_ttl_s,
    )
