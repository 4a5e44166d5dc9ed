"""Where this process sits in a distributed job: node, global rank, local rank, world size.

Launchers announce ranks under different names (torchrun, Kubeflow's PyTorchJob, Slurm, Open
MPI, MPICH/Intel MPI); the first variable that holds a valid value wins.  Ranks become directory
names of the local record, so a value is accepted only as a plain non-negative integer:
``"../x"``, ``"-1"`` or ``"3.0"`` can never reach a path.

The record lives in ``node_{node}/rank_{local rank}``, which must differ for every process of a
job even when all nodes share one file system.  torchrun, PyTorchJob and Slurm say which node a
process is on; MPI launchers (Open MPI, MPICH/Hydra, Intel MPI, PMI) do not (Open MPI's
``OMPI_COMM_WORLD_NODE_RANK`` is a per-node process index, not a node number), and assuming node
0 put global rank 8 into rank 0's directory.  Without a node variable the node directory is
therefore named ``global rank - local rank``: the first global rank of the node when ranks are
placed by node (``node_0``, ``node_8``, ... for 8 processes per node), and in any placement
(round robin, uneven nodes) the pair (global - local, local) gives back the global rank, which
is unique in the job, so two processes never share a path.  Without a local-rank variable the
local rank is the global rank (node 0); a lone process or plain multiprocessing is node 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

_NODE_RANK_VARS = ("NODE_RANK", "SLURM_NODEID", "PET_NODE_RANK", "GROUP_RANK")
_RANK_VARS = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
_LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
_WORLD_SIZE_VARS = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")

_MAX_RANK = 1 << 24  # no job has 16 million ranks; anything larger is garbage


@dataclass(frozen=True)
class Topology:
    node_rank: int = 0
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    rank_source: str = ""  # the variable the global rank came from ("" = defaulted)
    node: int = 0  # the record's node directory: the node rank, else global - local rank


def _first(env: Mapping[str, str], names: Sequence[str], low: int,
           problems: List[Tuple[str, str]]) -> Tuple[Optional[int], str]:
    for name in names:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            continue
        text = raw.strip()
        if text.isdigit() and text.isascii() and low <= int(text) < _MAX_RANK:
            return int(text), name
        problems.append((name, raw))
    return None, ""


def detect(environ: Optional[Mapping[str, str]] = None) -> Tuple[Topology, List[Tuple[str, str]]]:
    """Read the topology; also return (variable, raw value) for every value that was rejected."""
    env = os.environ if environ is None else environ
    problems: List[Tuple[str, str]] = []
    node, _ = _first(env, _NODE_RANK_VARS, 0, problems)
    rank, rank_source = _first(env, _RANK_VARS, 0, problems)
    local, _ = _first(env, _LOCAL_RANK_VARS, 0, problems)
    world, _ = _first(env, _WORLD_SIZE_VARS, 1, problems)
    if local is None:
        local = rank if rank is not None else 0
    if rank is None:
        rank = local if node in (None, 0) else 0
    if world is None:
        world = max(1, rank + 1)
    directory = node if node is not None else max(0, rank - local)
    return Topology(node or 0, rank, local, world, rank_source, directory), problems
