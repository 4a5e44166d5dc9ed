"""Where a process's local record lives: the one answer the session writes to and doctor reads.

The session and ``primus-lens doctor`` used to work this out each on its own and disagreed
(doctor looked for a status file beside a record that ``SAVE_LOCAL=false`` or a fallback had
moved elsewhere).  Both now ask ``record_location``; doctor then looks at every place the
location names (``RecordLocation.candidates``), since only the process that wrote knows which
one it got.  Standard library only: ``report.spool`` needs ``fallback_root`` and
``close_quietly`` too, and must not import the capture side for them.
"""

from __future__ import annotations

import glob
import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional

if TYPE_CHECKING:  # annotations only: the leaf stays free of runtime imports
    from .config import Config
    from .topology import Topology

FILE_NAME = "wandb_metrics.jsonl"
PRIVATE_DIR = "spool"  # under ``fallback_root()``: one private spool per process


def default_root(environ: Optional[Dict[str, str]] = None) -> str:
    """Beside wandb's own files: ``$WANDB_DIR/wandb/primus-lens`` or ``./wandb/primus-lens``."""
    env = os.environ if environ is None else environ
    base = env.get("WANDB_DIR") or os.getcwd()
    return os.path.join(os.path.abspath(base), "wandb", "primus-lens")


def fallback_root() -> str:
    """This user's directory in the temporary directory: for a record (or a file beside it)
    that cannot be kept where it belongs."""
    return os.path.join(tempfile.gettempdir(), f"primus-lens-{os.getuid()}")


def record_path(root: str, node: int, local_rank: int) -> str:
    """``node`` is ``Topology.node``: the node rank, or global - local rank where none is given."""
    return os.path.join(root, f"node_{int(node)}", f"rank_{int(local_rank)}", FILE_NAME)


def close_quietly(fd: int) -> None:
    """Close a descriptor we own; closing can only fail for one that is gone already."""
    try:
        os.close(fd)
    except OSError:
        pass


@dataclass(frozen=True)
class RecordLocation:
    """Where a process writes its record.

    ``path`` is "" when it keeps none (``SAVE_LOCAL=false`` and nothing to report).  ``fallback``
    is tried when ``path`` cannot be opened ("" for a private spool: it is in the fallback root
    already).  ``private`` is the root of a spool of this process alone ("" otherwise): with
    ``SAVE_LOCAL=false`` a reporting process still delivers from a record, one that no other
    process shares (so none can remove rows from it) and that the reporter removes once sent.
    """

    path: str
    fallback: str
    private: str
    node: int
    local_rank: int

    def candidates(self) -> List[str]:
        """Every record file of this node and rank that a process configured like this one may
        have written, in the order they are tried; for private spools, the ones that exist
        (each process names its own, so only the file system knows them)."""
        if self.private:
            pattern = record_path(os.path.join(fallback_root(), PRIVATE_DIR, "*"), self.node,
                                  self.local_rank)
            return sorted(glob.glob(pattern))
        return [path for path in (self.path, self.fallback) if path]


def record_location(config: Config, topology: Topology, reporting: bool = True) -> RecordLocation:
    """Where the process described by ``config`` and ``topology`` keeps its record.

    ``reporting``: whether it sends rows (``report.owner.process_reports``); it matters only with
    ``SAVE_LOCAL=false``, where a reporting process needs a private spool and another needs
    nothing.  Each call names a new private spool: call it once per process.
    """
    node, rank = topology.node, topology.local_rank
    if config.save_local:
        root = config.output_path or default_root()
        return RecordLocation(record_path(root, node, rank),
                              record_path(fallback_root(), node, rank), "", node, rank)
    if not reporting:
        return RecordLocation("", "", "", node, rank)
    private = os.path.join(fallback_root(), PRIVATE_DIR, f"{os.getpid()}-{os.urandom(4).hex()}")
    return RecordLocation(record_path(private, node, rank), "", private, node, rank)
