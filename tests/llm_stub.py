"""A fault-injecting OpenAI-compatible server on 127.0.0.1 for the generation tests.

Answers are deterministic: the text of choice k of a request with seed s is a function of
(user message, s + k), the seed semantics the backends promise, so asking n at once or n times
gives the same rows. Faults are queued per test: each matches requests whose user message
contains `match` (or every request) and fires `times` times (None: forever).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COLOURS = ["red", "brown", "grey", "green", "white", "black", "yellow", "blue", "pale", "dark"]
PARTS = [
    "stripes",
    "spots",
    "edges",
    "threads",
    "patches",
    "holes",
    "fibres",
    "lines",
    "marks",
    "folds",
]
SURFACES = [
    "smooth",
    "rough",
    "glossy",
    "matte",
    "woven",
    "wrinkled",
    "shiny",
    "dusty",
    "soft",
    "hard",
]


def stub_answer(user: str, seed: int) -> str:
    h = hashlib.sha256(f"{user}|{seed}".encode()).digest()
    subject = user.split(" of ")[-1].rstrip("?.:") if " of " in user else "it"
    return (
        f"It shows {COLOURS[h[0] % 10]} {PARTS[h[1] % 10]} on a {SURFACES[h[2] % 10]} surface, "
        f"typical of {subject}. Extra words after the first sentence"
    )


@dataclass
class Fault:
    kind: str  # HTTP: 500 503 429 401 403 404 400; transport: timeout slow empty_body malformed
    # no_choices; content: refusal empty_content constant
    match: str | None = None
    times: int | None = 1
    retry_after: str | None = None  # for 429
    delay_s: float = 0.0  # for slow / timeout
    # Fire only for this share of requests, picked by a hash of the body: the same request
    # (a retry) is always picked or always spared, so the failure persists.
    share: float | None = None

    def picks(self, req: Request) -> bool:
        if self.share is None:
            return True
        h = hashlib.sha256(json.dumps(req.body, sort_keys=True).encode()).digest()
        return int.from_bytes(h[:4], "big") / 2**32 < self.share


@dataclass
class Request:
    path: str
    body: dict[str, Any]
    at: float

    @property
    def user(self) -> str:
        msgs = self.body.get("messages") or []
        return msgs[-1]["content"] if msgs else self.body.get("prompt", "")


@dataclass
class StubState:
    honour_n: bool = True
    models_status: int = 200  # what GET /v1/models answers (401: a refused key, 404: no such route)
    delay_s: float = 0.0  # every answer waits this long
    formats: tuple[str, ...] = ("json_schema", "json_object")  # response_format types accepted
    faults: list[Fault] = field(default_factory=list)
    # Hold every answer until this many requests have arrived (at most 30 s): proves that that
    # many were in flight at once (two client processes, say).
    hold_until: int = 0
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    def release_hold(self) -> None:
        """Let every held answer go, and hold no more."""
        with self.arrived:
            self.hold_until = 0
            self.arrived.notify_all()

    def take_fault(self, req: Request) -> Fault | None:
        user = req.user
        with self.lock:
            for f in self.faults:
                if (
                    (f.match is None or f.match in user)
                    and (f.times is None or f.times > 0)
                    and f.picks(req)
                ):
                    if f.times is not None:
                        f.times -= 1
                    return f
        return None


class _Handler(BaseHTTPRequestHandler):
    state: StubState  # set on the subclass per server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client timed out
            self.wfile.write(payload)

    def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(obj).encode(), headers)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models" and self.state.models_status != 200:
            code = self.state.models_status
            self._json(code, {"error": {"message": f"injected {code}"}})
        elif self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "stub-model", "object": "model"}]})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        req = Request(self.path, body, time.monotonic())
        st = self.state
        with st.arrived:
            st.requests.append(req)
            st.arrived.notify_all()
            st.arrived.wait_for(lambda: len(st.requests) >= st.hold_until, timeout=30)
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            return self._json(404, {"error": "no such endpoint"})
        fmt = body.get("response_format")
        if fmt and fmt.get("type") not in st.formats:
            return self._json(
                400, {"error": {"message": f"response_format {fmt.get('type')} unsupported"}}
            )
        fault = st.take_fault(req)
        if st.delay_s:
            time.sleep(st.delay_s)
        if fault is not None:
            if fault.kind in {"500", "503", "401", "403", "404", "400"}:
                return self._json(int(fault.kind), {"error": {"message": f"injected {fault.kind}"}})
            if fault.kind == "429":
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                return self._json(429, {"error": {"message": "slow down"}}, headers)
            if fault.kind in ("timeout", "slow"):
                time.sleep(fault.delay_s)
            if fault.kind == "empty_body":
                return self._send(200, b"")
            if fault.kind == "malformed":
                return self._send(200, b'{"choices": [ {"message": ')
            if fault.kind == "no_choices":
                return self._json(200, {"choices": []})
        n = int(body.get("n", 1)) if st.honour_n else 1
        seed = int(body.get("seed", 0))
        choices = []
        for k in range(n):
            if fault is not None and fault.kind == "refusal":
                text = "I'm sorry, but I cannot help with that request."
            elif fault is not None and fault.kind == "empty_content":
                text = ""
            elif fault is not None and fault.kind == "constant":
                text = "It always looks exactly the same in every photo."
            else:
                text = stub_answer(req.user, seed + k)
            if self.path == "/v1/completions":
                choices.append({"index": k, "text": text, "finish_reason": "stop"})
            else:
                choices.append(
                    {
                        "index": k,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                )
        self._json(
            200,
            {
                "id": "stub",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": choices,
            },
        )


class StubServer:
    """`with StubServer() as stub:` ... `stub.url`, `stub.state`."""

    def __init__(self, state: StubState | None = None) -> None:
        self.state = state or StubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
