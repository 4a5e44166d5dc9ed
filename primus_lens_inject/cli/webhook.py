"""``primus-lens webhook``: the admission webhook, told which variables this injector reads.

The webhook (``k8s``) is a product of its own that imports no injector code; the command wires
in the one fact it needs from the injector, so a chart's misspelt ``PRIMUS_LENS_*`` setting is
reported at start-up against the names declared in ``config``.
"""

from __future__ import annotations

from typing import List

from .. import k8s
from ..config import VARIABLES


def main(argv: List[str]) -> int:
    return k8s.main(argv, frozenset(var.name for var in VARIABLES))
