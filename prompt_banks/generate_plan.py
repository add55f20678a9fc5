"""What one class of a domain spec asks the LLM: its row keys, its rounds, its requests.

Each sample is a row with a key (class, question, sample index, model, sampling params). The
planner decides, from the known status of each key, which samples a round asks for: the missing
ones first, then (bounded) extra samples when cleaning dropped some.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from prompt_banks.backends.base import CompletionRequest
from prompt_banks.schema import description_row_key
from prompt_banks.spec import ClassSpec, DomainSpec, render_question

# How n samples map to rows, recorded in llm_params: the seed of sample i is seed + i.
SAMPLING = "one row per sample; sample i uses seed + i"


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


class ClassPlanner:
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

    @property
    def lease_name(self) -> str:
        """The name of this class's work in the leases (prompt_banks.leases): domain, class, model
        and sampling settings, so that runs with another model never wait for each other."""
        parts = (self.spec.domain, self.cls.canonical, self.model_id, self.llm_params)
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]

    def opening(self, status: dict[str, str], retry_failed: bool) -> list[tuple[int, int]]:
        """The first round a run asks for this class; empty when the class needs nothing."""
        picks = self.first_round(status, retry_failed)
        if not picks and not retry_failed:  # a run killed between two rounds of the class
            picks = self.top_up(status)
        return picks

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
