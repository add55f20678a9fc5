"""Any OpenAI-compatible server: vLLM, the OpenAI API, llama.cpp's server, Ollama.

`base_url` may list several replicas of one model, comma-separated (the llama.cpp server runs one
request at a time, so infra/llama-cpp/serve.sh starts one process per parallel slot); each
request goes to the replica with the fewest requests in flight."""

from __future__ import annotations

import email.utils
import logging
import os
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
        return f"OpenAICompatBackend(base_urls={self.base_urls!r}, model={self.model_id!r})"

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
            raise FatalLLMError(f"llm: {self.base_url}: {hint}")
        detail = resp.text[:200].replace("\n", " ")
        if code in (400, 422) or (code == 500 and "response_format" in detail):
            # llama-cpp-python's server answers a request it cannot validate with 500
            raise _Rejected(f"HTTP {code}: {detail}")
        if code in (408, 409, 429) or code >= 500:
            raise TransientLLMError(
                f"HTTP {code}: {detail}", _retry_after(resp.headers.get("retry-after"))
            )
        raise LLMError(f"HTTP {code}: {detail}")

    def _served_model(self) -> str:
        """The first model a server lists, when the spec names none (llama.cpp serves one)."""
        try:
            resp = self._clients[0].get("/models")
        except httpx.HTTPError as exc:
            raise UserError(
                f"--base-url: cannot reach {self.base_url} ({type(exc).__name__}); start the "
                "server (infra/llama-cpp/serve.sh) or fix the URL"
            ) from None
        self._raise_for_status(resp)
        try:
            return str(resp.json()["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise UserError(
                f"--model: {self.base_url}/models lists no model; pass --model NAME"
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
                    self.base_url,
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
