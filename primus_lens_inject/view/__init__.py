"""``primus-lens report``: one self-contained HTML page of what the record roots hold.

What the command line uses:

- ``build_model(roots, progress_stream)``: every ``node_<n>/rank_<r>`` directory under the
  roots read into the page's model (``job``): runs, owners, delivery per sink, the numeric keys
  against wandb's step, the ranks' pulse as heatmaps, stalls and gaps, the lines skipped;
- ``write_page(model, path)``: the page, the vendored uPlot (MIT, ``vendor/``) inline, nothing
  fetched when it opens (``page``); returns its size;
- ``summary(model)``: the five lines the command prints.

Reads the record, pulse, status and writer files directly (``recordline``, ``pulseline``,
``paths``); imports nothing of ``capture``, ``pulse`` or ``agent``.  See docs/report.md.
"""

from .job import build as build_model
from .job import summary
from .page import write as write_page

__all__ = ["build_model", "summary", "write_page"]
