"""Headless Chromium for the report tests: the page as a person's browser renders it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
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
