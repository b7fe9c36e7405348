import json
import os
import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

_OWN_PROGRAMS: list[str] = []


def pytest_configure(config):
    """One folder of compiled programs for the whole session, shared by both workers and every
    process a test starts: the suite never reads or fills the user's cache, and each program is
    compiled once per session, as on a fresh machine. Tests of the store itself use their own."""
    if "ASTRA_TEST_PROGRAMS" not in os.environ:  # the controller; workers inherit its folder
        folder = tempfile.mkdtemp(prefix="astra-test-programs-")
        _OWN_PROGRAMS.append(folder)
        os.environ["ASTRA_TEST_PROGRAMS"] = os.environ["ASTRA_COMPILE_CACHE"] = folder


def pytest_unconfigure(config):
    for folder in _OWN_PROGRAMS:
        shutil.rmtree(folder, ignore_errors=True)


def send_completion(handler: BaseHTTPRequestHandler, text: str, prompt_tokens: int,
                    completion_tokens: int) -> None:
    """Answer a request as an OpenAI-compatible chat endpoint does."""
    data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}],
                       "usage": {"prompt_tokens": prompt_tokens,
                                 "completion_tokens": completion_tokens}}).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class FakeChatModel(BaseHTTPRequestHandler):
    """A real OpenAI-compatible HTTP endpoint on loopback: rewrites the quoted message, fails with
    503 on every `fail_every`-th request, and drops values on request `drop_on`."""

    def do_POST(self):  # noqa: N802
        srv = self.server
        with srv.lock:
            srv.count += 1
            n = srv.count
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.requests.append(body)
        if srv.fail_every and n % srv.fail_every == 0:
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"busy")
            return
        if srv.stop_after and n > srv.stop_after:
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b"quota exhausted")
            return
        user = body["messages"][-1]["content"]
        original = user.split("<<<\n", 1)[1].rsplit("\n>>>", 1)[0]
        text = "In my words: " + original if n != srv.drop_on else "I did the thing."
        send_completion(self, text, len(user.split()), len(text.split()))

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeChatModel)
    srv.lock, srv.count, srv.requests = threading.Lock(), 0, []
    srv.fail_every, srv.stop_after, srv.drop_on = 0, 0, 0
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield srv
    srv.shutdown()
    srv.server_close()
