"""``python -m primus_lens_inject`` is the ``primus-lens`` command."""

import sys

from .cli.main import main

sys.exit(main())
