"""`serve`: an HTTP server over one loaded backend (base model + adapter, loaded once).

    POST /v1/chat/completions   OpenAI-compatible chat completion
    POST /v1/localize           {"trace": <any supported trace format>, "candidates": {...},
                                 "trace_id"?: ..., "strategy"?: ..., "budget"?: ...}
                                 →  a verdict (Who&When records carry no id of their own)
    GET  /health

Requests are served by threads, up to the backend's `parallel` at once (a local model generates
them as one batch); a request that waits longer than `queue_timeout_s` for a place gets 503
rather than hanging. Bodies over
`max_body` bytes get 413, malformed JSON 400, and missing or mistyped fields 422 naming the field.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from data_gen.files import RawRecord
from data_gen.readers import read_record
from data_gen.trace import TraceError
from llm_stage.backends import Backend
from llm_stage.localize import localize_one
from llm_stage.strategies import STRATEGIES


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_body: int = 8 * 1024 * 1024
    queue_timeout_s: float = 120.0
    socket_timeout_s: float = 30.0
    max_tokens: int = 512
    budget: int = 4096
    k: int = 3


class HTTPError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _field(body: dict, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if name not in body:
        if default is ...:
            raise HTTPError(422, f"missing field {name!r}")
        return default
    value = body[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise HTTPError(422, f"field {name!r} must be {names}")
    return value


def make_server(backend: Backend, cfg: ServerConfig = ServerConfig()) -> ThreadingHTTPServer:
    gate = threading.Semaphore(max(1, getattr(backend, "parallel", 1)))  # one batch's worth

    def queued(fn, *args):
        if not gate.acquire(timeout=cfg.queue_timeout_s):
            raise HTTPError(503, f"busy: waited {cfg.queue_timeout_s:.0f} s in the queue")
        try:
            return fn(*args)
        finally:
            gate.release()

    def chat_completion(body: dict) -> dict:
        messages = _field(body, "messages", list)
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                    or not isinstance(m.get("content"), str):
                raise HTTPError(422, f"messages[{i}] must have string 'role' and 'content'")
        max_tokens = _field(body, "max_tokens", int, cfg.max_tokens)
        if not 1 <= max_tokens <= cfg.max_tokens:
            raise HTTPError(422, f"field 'max_tokens' must be in 1..{cfg.max_tokens}")
        c = queued(backend.complete, messages, max_tokens)
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                "created": int(time.time()), "model": backend.name,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": c.text}}],
                "usage": {"prompt_tokens": c.prompt_tokens,
                          "completion_tokens": c.completion_tokens,
                          "total_tokens": c.prompt_tokens + c.completion_tokens}}

    def localize_request(body: dict) -> dict:
        record = _field(body, "trace", dict)
        cands = _field(body, "candidates", dict, None)
        strategy = _field(body, "strategy", str, "coarse-to-fine" if cands else "all-at-once")
        if strategy not in STRATEGIES:
            raise HTTPError(422, f"field 'strategy' must be one of {', '.join(STRATEGIES)}")
        budget = _field(body, "budget", int, cfg.budget)
        try:
            trace, _ = read_record(RawRecord(_field(body, "trace_id", str, "request"), None,
                                             record))
        except TraceError as e:
            raise HTTPError(422, f"field 'trace': {e}") from None
        try:
            return queued(localize_one, trace, cands, backend, strategy, budget, cfg.k)
        except (ValueError, KeyError, TypeError) as e:
            raise HTTPError(422, str(e)) from None

    routes = {"/v1/chat/completions": chat_completion, "/v1/localize": localize_request}

    class Handler(BaseHTTPRequestHandler):
        timeout = cfg.socket_timeout_s
        protocol_version = "HTTP/1.1"

        def _send(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str) -> None:
            self._send(code, {"error": {"message": message, "code": code}})

        def do_GET(self):
            if self.path == "/health":
                self._send(200, {"status": "ok", "model": backend.name})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            try:
                route = routes.get(self.path)
                if route is None:
                    raise HTTPError(404, f"no route {self.path}")
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    raise HTTPError(411, "Content-Length required")
                if int(length) > cfg.max_body:
                    self.close_connection = True
                    raise HTTPError(413, f"body of {length} bytes is over the "
                                         f"{cfg.max_body}-byte limit")
                raw = self.rfile.read(int(length))
                try:
                    body = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise HTTPError(400, f"body is not UTF-8 (byte {e.start})") from None
                except json.JSONDecodeError as e:
                    raise HTTPError(400, f"body is not JSON: {e}") from None
                if not isinstance(body, dict):
                    raise HTTPError(400, "body must be a JSON object")
                self._send(200, route(body))
            except HTTPError as e:
                self._error(e.code, str(e))
            except Exception as e:  # a bug or a backend failure must not kill the server
                self._error(500, f"{type(e).__name__}: {e}")

        def log_message(self, fmt, *args):
            pass

    server = ThreadingHTTPServer((cfg.host, cfg.port), Handler)
    server.daemon_threads = True
    return server
