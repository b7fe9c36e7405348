"""Headless Chromium for the report tests: the page as a person's browser renders it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0")
WINDOW = "1400,1600"


def chromium() -> str:
    """The browser, or a skip where none is installed; CI installs it and sets
    ASTRA_REQUIRE_BROWSER=1, so there a missing browser fails instead."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("ASTRA_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    return path


@dataclass
class Rendered:
    dom: str
    console: str  # the browser's log lines, console messages among them
    screenshot: Path

    def body_attr(self, name: str) -> str | None:
        m = re.search(r"<body[^>]*\s" + re.escape(name) + r'="([^"]*)"', self.dom)
        return m.group(1) if m else None


def render(page: Path, out_png: Path) -> Rendered:
    """Load `page` twice at one window size: once for the DOM after scripts ran, once for a
    screenshot."""
    exe = chromium()
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory() as prof:
        common = [exe, *FLAGS, f"--user-data-dir={prof}", f"--window-size={WINDOW}",
                  "--hide-scrollbars", "--virtual-time-budget=3000"]
        dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                             timeout=120)
        shot = subprocess.run([*common, f"--screenshot={out_png}", url], capture_output=True,
                              text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert shot.returncode == 0 and out_png.exists(), shot.stderr[-2000:]
    return Rendered(dom.stdout, dom.stderr + shot.stderr, out_png)


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
    messages are JSON ended by a NUL byte on file descriptors 3 and 4), so a test can click,
    type and collect downloads as a person would, with nothing beyond the standard library."""

    def __init__(self, downloads: Path):
        exe = chromium()
        self._prof = tempfile.TemporaryDirectory()
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        # the child reads commands on fd 3 and writes answers on fd 4; a small Python moves
        # the pipe ends there and becomes the browser (no preexec_fn: forking a process that
        # runs JAX's threads is unsafe)
        move = ("import fcntl, os, sys; r, w = (fcntl.fcntl(int(a), fcntl.F_DUPFD, 10) for a in "
                "sys.argv[1:3]); os.dup2(r, 3); os.dup2(w, 4); os.execv(sys.argv[3], sys.argv[3:])")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", move, str(to_child_r), str(from_child_w), exe, *FLAGS,
             f"--user-data-dir={self._prof.name}", f"--window-size={WINDOW}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(to_child_r, from_child_w))
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf, self._id, self.events = b"", 0, []
        downloads.mkdir(parents=True, exist_ok=True)
        self.call("Browser.setDownloadBehavior", behavior="allow",
                  downloadPath=str(downloads), eventsEnabled=True)
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target,
                                  flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)

    def _read(self) -> dict:
        import json
        import select
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._from_child], [], [], 60)
            if not ready:
                raise TimeoutError("chromium sent nothing for 60 s")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: bool = False, **params) -> dict:
        import json
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self._session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                assert "error" not in reply, (method, reply["error"])
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0, **match) -> dict:
        """The first event `method` whose params hold `match` (already seen ones included)."""
        import time
        end = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e.get("method") == method and all(e["params"].get(k) == v
                                                     for k, v in match.items()):
                    self.events.remove(e)
                    return e["params"]
            if time.monotonic() > end:
                raise TimeoutError(f"no {method} {match}")
            self.events.append(self._read())

    def open(self, page: Path) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=page.resolve().as_uri())
        self.wait_for("Page.loadEventFired")

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", session=True, expression=expression,
                      returnByValue=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click at the middle of the element (scrolled into view first)."""
        import json
        box = self.js(f"(function () {{ var el = document.querySelector({json.dumps(selector)});"
                      "el.scrollIntoView({block: 'center'}); var r = el.getBoundingClientRect();"
                      "return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=box[0], y=box[1],
                      button="left", clickCount=1)

    def type_into(self, selector: str, text: str) -> None:
        self.click(selector)
        self.call("Input.insertText", session=True, text=text)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError, TimeoutError):
            pass
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)
        self._prof.cleanup()
