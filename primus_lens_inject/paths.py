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
import re
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

if TYPE_CHECKING:  # annotations only: the leaf stays free of runtime imports
    from .config import Config
    from .topology import Topology

_FILE_NAME = "wandb_metrics.jsonl"
SHARED_MODE = 0o777  # a record directory of agent mode: the agent, another user, writes there
SHARED_FILE_MODE = 0o644  # a file in it: everyone reads, only its owner writes (appends)
_PRIVATE_DIR = "spool"  # under ``fallback_root()``: one private spool per process
_JOB_PREFIX = "job-"  # under ``fallback_root()``: one fallback record tree per job
# Variables that name the job a process belongs to, most specific first: two jobs of one user on
# one machine must never share a fallback record (their rows would interleave under one name).
_JOB_VARIABLES = ("WORKLOAD_UID", "POD_NAME", "SLURM_JOB_ID")


def _default_root(environ: Optional[Dict[str, str]] = None) -> str:
    """Beside wandb's own files: ``$WANDB_DIR/wandb/primus-lens`` or ``./wandb/primus-lens``."""
    env = os.environ if environ is None else environ
    base = env.get("WANDB_DIR") or os.getcwd()
    return os.path.join(os.path.abspath(base), "wandb", "primus-lens")


def fallback_root() -> str:
    """This user's directory in the temporary directory: for a record (or a file beside it)
    that cannot be kept where it belongs."""
    return os.path.join(tempfile.gettempdir(), f"primus-lens-{os.getuid()}")


def _job_name(environ: Optional[Dict[str, str]] = None) -> Tuple[str, bool]:
    """The name of this process's job for its fallback record, and whether another process of
    the same job (a restart, ``primus-lens doctor`` in the same pod) finds the same name: the
    first of ``_JOB_VARIABLES`` that is set, else this process's own ``pid-<pid>``."""
    env = os.environ if environ is None else environ
    for name in _JOB_VARIABLES:
        value = (env.get(name) or "").strip()
        if value:
            return re.sub(r"[^A-Za-z0-9._-]", "_", value)[:100], True
    return f"pid-{os.getpid()}", False


def record_path(root: str, node: int, local_rank: int) -> str:
    """``node`` is ``Topology.node``: the node rank, or global - local rank where none is given."""
    return os.path.join(root, f"node_{int(node)}", f"rank_{int(local_rank)}", _FILE_NAME)


def make_dirs(path: str, shared: bool = False) -> None:
    """``os.makedirs(path, exist_ok=True)``; with ``shared``, every directory this call creates
    gets mode ``SHARED_MODE`` (0o777, set by ``chmod``: the umask cannot narrow it), and those
    that existed keep theirs.

    Shared directories are for the pod agent (``PRIMUS_LENS_AGENT=true``): the trainers create a
    record's directories as their own user (often root), and the agent, another user, must create,
    replace and remove its side files there (docs/agent.md, "Who may write the record's
    directories").  ``OSError`` as ``os.makedirs``.
    """
    if not shared:
        os.makedirs(path, exist_ok=True)
        return
    path = os.path.normpath(path)
    parent = os.path.dirname(path)
    if parent and parent != path and not os.path.isdir(parent):
        make_dirs(parent, shared=True)
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return  # another process made it: its mode is that process's
    os.chmod(path, SHARED_MODE)


def is_shared(directory: str) -> bool:
    """Whether every user may create and remove files in ``directory`` (``make_dirs`` with
    ``shared``)."""
    try:
        return os.stat(directory).st_mode & SHARED_MODE == SHARED_MODE
    except OSError:
        return False


def share_file(fd: int) -> None:
    """Make a file of a shared directory readable by every user (0644: the pod agent reads what
    the trainers write) whatever the umask; best effort (a file of another user keeps its
    mode)."""
    try:
        os.fchmod(fd, SHARED_FILE_MODE)
    except OSError:
        pass


def make_side_dir(directory: str) -> None:
    """Create a directory beside a record (its writers, its detection queue), shared where the
    directory that holds it is (a record of agent mode), else as ``os.makedirs``."""
    make_dirs(directory, shared=is_shared(os.path.dirname(os.path.normpath(directory))))


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
    is tried when ``path`` cannot be opened, and takes the rows ``path`` cannot take at the
    process end ("" for a private spool: it is in the fallback root already); it is the job's
    own (``_job_name``), and ``fallback_known`` says whether another process of the job can
    name it (false: it carries the writer's pid).  ``private`` is the root of a spool of this
    process alone ("" otherwise): with ``SAVE_LOCAL=false`` a reporting process still delivers
    from a record, one that no other process shares (so none can remove rows from it) and that
    the reporter removes once sent.  ``shared``: the directories of ``path`` are made for the pod
    agent too (``make_dirs``: ``PRIMUS_LENS_AGENT=true``); a fallback or private spool never is.
    """

    path: str
    fallback: str
    private: str
    node: int
    local_rank: int
    fallback_known: bool = True
    shared: bool = False

    def candidates(self) -> List[str]:
        """Every record file of this node and rank that a process configured like this one may
        have written, in the order they are tried; for private spools, the ones that exist
        (each process names its own, so only the file system knows them)."""
        if self.private:
            pattern = record_path(os.path.join(fallback_root(), _PRIVATE_DIR, "*"), self.node,
                                  self.local_rank)
            return sorted(glob.glob(pattern))
        if self.fallback and not self.fallback_known:  # named by each writer's pid
            pattern = record_path(os.path.join(fallback_root(), _JOB_PREFIX + "pid-*"), self.node,
                                  self.local_rank)
            return [path for path in (self.path, *sorted(glob.glob(pattern))) if path]
        return [path for path in (self.path, self.fallback) if path]


def record_location(config: Config, topology: Topology, reporting: bool = True) -> RecordLocation:
    """Where the process described by ``config`` and ``topology`` keeps its record.

    ``reporting``: whether it sends rows (``report.owner.process_reports``); it matters only with
    ``SAVE_LOCAL=false``, where a reporting process needs a private spool and another needs
    nothing.  Each call names a new private spool: call it once per process.
    """
    node, rank = topology.node, topology.local_rank
    if config.save_local:
        root = config.output_path or _default_root()
        job, known = _job_name({"WORKLOAD_UID": config.workload_uid, "POD_NAME": config.pod_name,
                                "SLURM_JOB_ID": os.environ.get("SLURM_JOB_ID", "")})
        fallback = record_path(os.path.join(fallback_root(), _JOB_PREFIX + job), node, rank)
        return RecordLocation(record_path(root, node, rank), fallback, "", node, rank, known,
                              shared=config.agent)
    if not reporting:
        return RecordLocation("", "", "", node, rank)
    private = os.path.join(fallback_root(), _PRIVATE_DIR, f"{os.getpid()}-{os.urandom(4).hex()}")
    return RecordLocation(record_path(private, node, rank), "", private, node, rank)


def rank_dirs(root: str) -> List[str]:
    """Every ``node_<n>/rank_<r>`` directory under a record root, sorted: where the pod agent
    and ``primus-lens report`` find each process's record and pulse (new ones on every call)."""
    pattern = os.path.join(glob.escape(root), "node_*", "rank_*")
    return sorted(path for path in glob.glob(pattern) if os.path.isdir(path))


def record_in(rank_dir: str) -> str:
    """The record file of one ``node_<n>/rank_<r>`` directory (it may not exist yet)."""
    return os.path.join(rank_dir, _FILE_NAME)
