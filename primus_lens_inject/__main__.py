"""``python -m primus_lens_inject`` is the ``primus-lens`` command."""

import sys

from .cli import main

sys.exit(main())
