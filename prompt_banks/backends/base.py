"""The one interface every LLM backend implements, and the errors it may raise."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

from prompt_banks.errors import UserError


@dataclass(frozen=True)
class CompletionRequest:
    """One request: `n` samples of an answer to one user message.

    Sample k of the request is drawn with seed `seed + k`, so a backend that cannot return n
    samples at once gives the same rows by asking n times."""

    user: str
    system: str | None
    n: int
    seed: int | None
    temperature: float
    max_tokens: int
    stop: tuple[str, ...]


class LLMError(Exception):
    """A request that failed; the row is stored as failed with this message (never a secret)."""


class TransientLLMError(LLMError):
    """Worth retrying: timeouts, 429, 5xx, connection drops, malformed or truncated bodies."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FatalLLMError(UserError):
    """The whole run cannot succeed (bad key, unknown model, missing endpoint): stop at once."""


class LLMBackend(ABC):
    """An LLM that answers CompletionRequests. `complete` must be safe to call from threads."""

    #: Identifies the model in row keys and the store (e.g. "SmolLM2-135M-Instruct-Q8_0").
    model_id: str
    #: The largest `n` one call may ask for (1 where the backend samples one at a time anyway).
    max_n: int = 1
    #: Settings that change answers beyond CompletionRequest (endpoint, structured output).
    key_params: dict[str, object]

    @abstractmethod
    def complete(self, request: CompletionRequest) -> list[str]:
        """Exactly `request.n` answer texts, or an LLMError."""

    def preflight(self) -> None:  # noqa: B027 (in-process backends loaded their model)
        """Raise a one-line UserError at once when nothing can answer requests. A backend whose
        constructor loaded its model can answer, so the default checks nothing."""

    def close(self) -> None:  # noqa: B027 (most backends hold nothing)
        """Release connections or models."""

    def __enter__(self) -> LLMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"description": {"type": "string"}},
    "required": ["description"],
    "additionalProperties": False,
}
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def parse_answer(text: str | None) -> str:
    """The answer inside a model's text: tolerant of JSON objects (structured output, or a model
    that answers in JSON unasked), code fences, and plain text. Never raises."""
    if not text:
        return ""
    stripped = _FENCE.sub("", text.strip())
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError:
            # A JSON answer cut by max_tokens: take what was inside the first string value.
            m = re.search(r'"\w+"\s*:\s*"((?:[^"\\]|\\.)*)', stripped)
            return m.group(1) if m else stripped
        if isinstance(obj, dict):
            value = obj.get("description")
            if not isinstance(value, str):
                value = next((v for v in obj.values() if isinstance(v, str)), "")
            return value
    return stripped
