"""The report as one self-contained HTML file: the model as JSON, the vendored chart library, the
page's own script and style, all inline; nothing is fetched when it opens.

Everything in the model came from files a training process wrote, so none of it may run: the
model goes into a ``<script type="application/json">`` block (never executed), with every ``<``,
``>`` and ``&`` and every non-ASCII character (U+2028 and U+2029 among them) written as a
``\\uXXXX`` escape, so no ``</script>`` or ``<!--`` can end or change the block; the page's
script puts every text in with ``textContent``, never as markup.  A Content-Security-Policy
lets only the page's own two scripts run (by their SHA-256), so even markup that got in some
other way could not run a handler.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from typing import Any, Dict

_HERE = os.path.dirname(os.path.abspath(__file__))
VENDOR = os.path.join(_HERE, "vendor")
_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"}


def _asset(*parts: str) -> str:
    with open(os.path.join(_HERE, *parts), encoding="utf-8") as f:
        return f.read()


def _finite(value: Any) -> Any:
    """The model with every non-finite float as null (strict JSON has no spelling for them)."""
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is dict:
        return {str(k): _finite(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return [_finite(v) for v in value]
    return value


def embedded_json(model: Dict[str, Any]) -> str:
    """The model as JSON that is inert inside a ``<script>`` block (module docstring)."""
    try:
        text = json.dumps(model, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    except ValueError:  # a non-finite float from a hostile line: rare, so only then walk it
        text = json.dumps(_finite(model), ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.translate(_ESCAPES)


def _digest(script: str) -> str:
    return base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


def render(model: Dict[str, Any]) -> str:
    """The whole page."""
    scripts = [_asset("vendor", "uPlot.iife.min.js"), _asset("page.js")]
    for script in scripts:
        if "</script" in script.lower():
            raise ValueError("a bundled script would end its own <script> block")
    policy = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src "
              + " ".join(f"'sha256-{_digest(s)}'" for s in scripts))
    style = _asset("vendor", "uPlot.min.css") + "\n" + _asset("page.css")
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{policy}\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>primus-lens report</title><style>", style, "</style></head><body>",
        "<main id=\"app\"><p id=\"loading\">Drawing the report…</p></main>",
        "<script type=\"application/json\" id=\"lens-data\">", embedded_json(model), "</script>",
        *(f"<script>{script}</script>" for script in scripts),
        "</body></html>\n",
    ])


def write(model: Dict[str, Any], path: str) -> int:
    """Write the page to ``path`` (replacing it whole: a reader never sees half a page); its
    size in bytes."""
    text = render(model).encode("utf-8")
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as f:
        f.write(text)
    os.replace(temporary, path)
    return len(text)
