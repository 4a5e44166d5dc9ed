"""A report page opened in real headless Chromium: its DOM, its console, a screenshot's pixels.

Two runs of the browser per page: ``--dump-dom`` gives the DOM after the page's script ran (the
page writes what it drew into ``#lens-selfcheck``: every chart, its painted pixels, its legend
under the cursor, every heatmap's rows) and, with ``--enable-logging=stderr``, every console
message (``CONSOLE`` lines: the page itself logs nothing, so any is an error, a CSP refusal
included); ``--screenshot`` at the page's full height gives the pixels the checks look at
inside each chart's rectangle.  A fresh profile each time, no network, no GPU.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from conftest import require

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=15000"]
WIDTH = 1280
MAX_HEIGHT = 16000  # Chromium's screenshot limit is higher; the pages tested are shorter
_SELFCHECK = re.compile(r'<pre id="lens-selfcheck"[^>]*>(.*?)</pre>', re.S)


def need_chromium() -> str:
    """Chromium's path, or the test is skipped saying why; failed instead under ``make test``,
    which installs it (``PRIMUS_LENS_REQUIRE_TOOLS``, mk/system.mk)."""
    require("chromium", CHROMIUM is not None,
            "chromium is not installed (make test installs Debian's chromium as root)")
    assert CHROMIUM is not None
    return CHROMIUM


@dataclass
class Page:
    """What the browser made of a report page."""

    dom: str
    console: List[str]
    selfcheck: Dict[str, Any]
    screenshot: Optional[Path] = None

    def pixels_in(self, rect: List[float]) -> int:
        """Distinct colours in a rectangle (x, y, width, height in CSS pixels) of the screenshot:
        1 for a blank one."""
        from PIL import Image

        assert self.screenshot is not None
        with Image.open(self.screenshot) as image:
            x, y, w, h = (round(v) for v in rect)
            box = image.convert("RGB").crop((x, y, x + w, y + h))
            return len(box.getcolors(maxcolors=1 << 20) or [])


def _chromium(args: List[str], profile: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([need_chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HOME": str(profile)})


def open_page(page: Path, workdir: Path, screenshot: bool = True, timeout: float = 120) -> Page:
    """Open ``page`` (a file) the two ways the module docstring says."""
    url = page.resolve().as_uri()
    dumped = _chromium(["--enable-logging=stderr", "--v=0", f"--window-size={WIDTH},1200",
                        "--dump-dom", url], workdir / "profile-dom", timeout)
    assert dumped.returncode == 0, dumped.stderr[-3000:]
    console = [line for line in dumped.stderr.splitlines() if ":CONSOLE" in line]
    found = _SELFCHECK.search(dumped.stdout)
    assert found, f"the page wrote no self-check; console: {console}"
    selfcheck = json.loads(html.unescape(found.group(1)))
    shot = None
    if screenshot:
        shot = workdir / "page.png"
        height = min(int(selfcheck.get("height") or 2000) + 40, MAX_HEIGHT)
        taken = _chromium([f"--window-size={WIDTH},{height}", f"--screenshot={shot}", url],
                          workdir / "profile-shot", timeout)
        assert taken.returncode == 0 and shot.exists(), taken.stderr[-3000:]
    return Page(dumped.stdout, console, selfcheck, shot)
