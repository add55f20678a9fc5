"""Any OpenAI-compatible server: vLLM, the OpenAI API, llama.cpp's server, Ollama.

`base_url` may list several replicas of one model, comma-separated (the llama.cpp server runs one
request at a time, so infra/llama-cpp/serve.sh starts one process per parallel slot); each
request goes to the replica with the fewest requests in flight."""

from __future__ import annotations

import email.utils
import logging
import os
import re
import socket
import threading
import time
from typing import Any

import httpx
from pydantic import SecretStr

from prompt_banks.backends.base import (
    ANSWER_SCHEMA,
    CompletionRequest,
    FatalLLMError,
    LLMBackend,
    LLMError,
    TransientLLMError,
    parse_answer,
)
from prompt_banks.errors import UserError
from prompt_banks.spec import LLMSettings

log = logging.getLogger(__name__)

_FATAL = {
    401: "the server refused the API key (401); set ${env} to a valid key",
    403: "the API key may not use this model (403); check ${env} and --model",
    404: "unknown model or endpoint (404); check --model and --base-url",
}


# How to ask for JSON-schema answers, tried in this order until a server accepts one: OpenAI and
# vLLM take `json_schema`; llama-cpp-python's server takes `json_object` with a `schema`.
_FORMATS: tuple[str | None, ...] = ("json_schema", "json_object", None)


class _Rejected(LLMError):
    """HTTP 400/422: the server refused a parameter of the request."""


# A preflight that waits longer than this for a server is waiting for one that is not there.
PREFLIGHT_TIMEOUT_S = 5.0


def shown_url(url: str) -> str:
    """`url` as messages show it: without user:password@ or a query (where keys may hide)."""
    return re.sub(r"//[^/@]*@", "//", url).split("?", 1)[0]


def why_unreachable(exc: httpx.TransportError, timeout_s: float) -> str:
    """What a failed connection says to a person: refused, no such host, or no answer."""
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout_s:g} s"
    cause: BaseException | None = exc
    for _ in range(8):  # the socket error sits a few causes down
        if cause is None:
            break
        if isinstance(cause, socket.gaierror):
            return "host name not found"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


def _api_base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class OpenAICompatBackend(LLMBackend):
    def __init__(self, settings: LLMSettings) -> None:
        if not settings.base_url:
            raise UserError("llm.base_url: the openai backend needs a server; pass --base-url URL")
        self.settings = settings
        self.base_urls = [_api_base(u) for u in settings.base_url.split(",") if u.strip()]
        self.base_url = self.base_urls[0]
        self.api_key_env = settings.api_key_env
        self._key = SecretStr(os.environ.get(settings.api_key_env, ""))
        headers = {"Content-Type": "application/json"}
        if self._key.get_secret_value():
            headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        self._clients = [
            httpx.Client(base_url=u, headers=headers, timeout=settings.timeout_s)
            for u in self.base_urls
        ]
        self._in_flight = [0] * len(self._clients)
        self._lock = threading.Lock()
        self.model_id = settings.model or self._served_model()
        self.max_n = settings.samples_per_request
        self.key_params = {
            "endpoint": settings.endpoint,
            "structured_output": settings.structured_output,
        }
        self._n_honoured = True  # until a server returns fewer choices than asked
        self._format = _FORMATS[0] if settings.structured_output else None

    def __repr__(self) -> str:  # never shows the key
        shown = [shown_url(u) for u in self.base_urls]
        return (
            f"OpenAICompatBackend(base_urls={shown!r}, model={getattr(self, 'model_id', None)!r})"
        )

    # -- transport ------------------------------------------------------------------------
    def _post(self, slot: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = self._clients[slot].post(path, json=body)
        except httpx.TimeoutException as exc:
            raise TransientLLMError(
                f"timeout after {self.settings.timeout_s:g}s ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise TransientLLMError(f"connection error: {type(exc).__name__}: {exc}") from None
        self._raise_for_status(resp)
        try:
            data = resp.json()
        except ValueError:
            raise TransientLLMError(
                f"malformed body ({len(resp.content)} bytes, not JSON)"
            ) from None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("choices"), list)
            or not data["choices"]
        ):
            raise TransientLLMError("malformed body (no choices)")
        return data

    def _raise_for_status(self, resp: httpx.Response) -> None:
        code = resp.status_code
        if code < 400:
            return
        if code in _FATAL:
            hint = _FATAL[code].replace("${env}", f"${self.api_key_env}")
            raise FatalLLMError(f"llm: {shown_url(self.base_url)}: {hint}")
        detail = resp.text[:200].replace("\n", " ")
        if code in (400, 422) or (code == 500 and "response_format" in detail):
            # llama-cpp-python's server answers a request it cannot validate with 500
            raise _Rejected(f"HTTP {code}: {detail}")
        if code in (408, 409, 429) or code >= 500:
            raise TransientLLMError(
                f"HTTP {code}: {detail}", _retry_after(resp.headers.get("retry-after"))
            )
        raise LLMError(f"HTTP {code}: {detail}")

    def _probe(self, slot: int) -> httpx.Response | str:
        """GET /models on replica `slot` with a short timeout: the response (any status: the
        server answers), or why nothing answered."""
        timeout = min(self.settings.timeout_s, PREFLIGHT_TIMEOUT_S)
        try:
            return self._clients[slot].get("/models", timeout=timeout)
        except httpx.TransportError as exc:
            return why_unreachable(exc, timeout)

    def _unreachable(self, urls: list[str], reasons: list[str]) -> UserError:
        where = "; ".join(f"{shown_url(u)} ({r})" for u, r in zip(urls, reasons, strict=True))
        return UserError(
            f"--base-url: cannot reach {where}; start the server (infra/llama-cpp/serve.sh) "
            "or fix --base-url (llm.base_url in the spec)"
        )

    def preflight(self) -> None:
        """Fail at once when no replica answers; replicas that do not answer are left out (a
        dead replica fails fast, so it would draw the most requests). A refused key (401/403)
        fails here too; any other status means the server is there."""
        answers = {slot: self._probe(slot) for slot in range(len(self._clients))}
        dead = [slot for slot, got in answers.items() if isinstance(got, str)]
        if len(dead) == len(self._clients):
            raise self._unreachable(self.base_urls, [str(answers[s]) for s in dead])
        for got in answers.values():
            if isinstance(got, httpx.Response) and got.status_code in (401, 403):
                self._raise_for_status(got)
        if dead:
            log.warning(
                "llm: leaving out replicas that do not answer: %s",
                ", ".join(f"{shown_url(self.base_urls[s])} ({answers[s]})" for s in dead),
            )
            live = [slot for slot in range(len(self._clients)) if slot not in dead]
            for slot in dead:
                self._clients[slot].close()
            with self._lock:
                self._clients = [self._clients[s] for s in live]
                self.base_urls = [self.base_urls[s] for s in live]
                self._in_flight = [0] * len(live)
                self.base_url = self.base_urls[0]

    def _served_model(self) -> str:
        """The first model the first answering replica lists, when the spec names none
        (llama.cpp serves one)."""
        reasons: list[str] = []
        for slot in range(len(self._clients)):
            resp = self._probe(slot)
            if isinstance(resp, httpx.Response):
                break
            reasons.append(resp)
        else:
            raise self._unreachable(self.base_urls, reasons)
        self._raise_for_status(resp)
        try:
            return str(resp.json()["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise UserError(
                f"--model: {shown_url(self.base_url)}/models lists no model; pass --model NAME"
            ) from None

    # -- one request ----------------------------------------------------------------------
    def _body(self, req: CompletionRequest, n: int, seed: int | None) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model_id,
            "temperature": req.temperature,
            "max_tokens": req.max_tokens,
        }
        if n > 1:
            body["n"] = n
        if seed is not None:
            body["seed"] = seed
        # A stop at "." would cut a JSON answer; the cleaner cuts the first sentence instead.
        if self._format == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "description", "schema": ANSWER_SCHEMA, "strict": True},
            }
        elif self._format == "json_object":
            body["response_format"] = {"type": "json_object", "schema": ANSWER_SCHEMA}
        elif req.stop:
            body["stop"] = list(req.stop)
        if self.settings.endpoint == "completions":
            return "/completions", {**body, "prompt": req.user}
        messages = [{"role": "user", "content": req.user}]
        if req.system:
            messages.insert(0, {"role": "system", "content": req.system})
        return "/chat/completions", {**body, "messages": messages}

    def _texts(self, data: dict[str, Any]) -> list[str]:
        texts = []
        for choice in data["choices"]:
            if not isinstance(choice, dict):
                raise TransientLLMError("malformed body (a choice is not an object)")
            if self.settings.endpoint == "completions":
                raw = choice.get("text")
            else:
                raw = (choice.get("message") or {}).get("content")
            texts.append(parse_answer(raw if isinstance(raw, str) else None))
        return texts

    def _ask(self, slot: int, req: CompletionRequest, n: int, seed: int | None) -> list[str]:
        """One request; a server that refuses the structured-output format gets the next one."""
        while True:
            fmt = self._format
            path, body = self._body(req, n, seed)
            try:
                return self._texts(self._post(slot, path, body))
            except _Rejected:
                if fmt is None:
                    raise
                with self._lock:
                    if self._format == fmt:
                        self._format = _FORMATS[_FORMATS.index(fmt) + 1]
                log.info(
                    "llm: %s refused response_format %r; trying %r",
                    shown_url(self.base_url),
                    fmt,
                    self._format,
                )

    def complete(self, request: CompletionRequest) -> list[str]:
        # Every sample of a request goes to one replica, one after another: a llama.cpp server
        # then reuses the evaluated prompt instead of computing it again.
        with self._lock:
            use_n = self._n_honoured and request.n > 1
            slot = min(range(len(self._clients)), key=self._in_flight.__getitem__)
            self._in_flight[slot] += 1
        try:
            return self._complete_on(slot, request, use_n)
        finally:
            with self._lock:
                self._in_flight[slot] -= 1

    def _complete_on(self, slot: int, request: CompletionRequest, use_n: bool) -> list[str]:
        texts: list[str] = []
        if use_n:
            texts = self._ask(slot, request, request.n, request.seed)[: request.n]
            if len(texts) < request.n:
                with self._lock:
                    self._n_honoured = False  # this server ignores n: ask one at a time
        for k in range(len(texts), request.n):
            seed = None if request.seed is None else request.seed + k
            texts.append(self._ask(slot, request, 1, seed)[0])
        return texts

    def close(self) -> None:
        for client in self._clients:
            client.close()
