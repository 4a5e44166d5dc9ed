"""The commands (``primus-lens``, ``python -m primus_lens_inject``): run, doctor, install,
uninstall, check, and the two products' own commands, receive and webhook.

The top layer: it may import any module of the package, lazily where start-up matters, and
nothing imports it but the entry points (the ``primus-lens`` console script, ``cli.main.main``,
and ``__main__``).  It offers nothing to other layers.
"""

from typing import List

__all__: List[str] = []
