"""``make screenshot``: the README's picture of the report, from a real run of the demo's job.

Runs ``examples/demo.py`` (the whole demo: receiver, four ranks under the injector, the report)
into ``build/screenshot/``, opens its ``report.html`` in headless Chromium (Debian's
``chromium``, which ``make test`` installs) and saves the top of the page, ``--height`` pixels
of it, as ``docs/images/report.png``: reduced to a 256-colour palette (Pillow), so the file
stays small enough to commit.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    found = next((path for path in map(shutil.which, BROWSERS) if path), None)
    if found is None:
        raise SystemExit(f"no headless browser: none of {', '.join(BROWSERS)} is on PATH "
                         "(Debian: apt-get install chromium; `make test` does it as root)")
    return found


def capture(page: Path, png: Path, width: int, height: int) -> None:
    """A ``width`` x ``height`` screenshot of the top of ``page``, after its scripts have run."""
    with tempfile.TemporaryDirectory(prefix="primus-lens-chromium-") as profile:
        done = subprocess.run(
            [browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", f"--user-data-dir={profile}", "--force-device-scale-factor=1",
             f"--window-size={width},{height}", "--virtual-time-budget=10000",
             f"--screenshot={png}", page.as_uri()],
            capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not png.is_file():
        raise SystemExit(f"chromium failed ({done.returncode}):\n{done.stderr[-3000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "report.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=3150)
    args = parser.parse_args()
    work = ROOT / "build" / "screenshot"
    demo = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--out", str(work)])
    if demo.returncode != 0:
        print("the demo failed: no screenshot taken", file=sys.stderr)
        return demo.returncode
    raw = work / "report-raw.png"
    capture(work / "report.html", raw, args.width, args.height)
    with Image.open(raw) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    small.save(args.out, optimize=True)
    print(f"{args.out.relative_to(ROOT)}: {args.width}x{args.height}, {args.out.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
