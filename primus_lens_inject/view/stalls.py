"""Stalls from the pulse: when, which ranks, their stacks side by side, the odd one out.

A synchronous job stalls as a whole: one rank stops (a hung data loader, a dead NFS mount) and
every other rank waits for it in the next collective.  Their stacks then agree (all in the
all-reduce) but one's: that rank is the one to look at.  So the stall lines of the ranks are
grouped into events (stalls that began within one threshold of the event's first), and per event
each rank's *signature*, the innermost frames of its main thread without line numbers, is compared:
the ranks whose signature differs from the one most ranks share are marked, when most ranks do
share one (with two ranks, or no majority, nobody is marked).

A rank's stacks are shown as a person reads them (``ordered``): the main thread first (it runs the
training script), then the other threads of the process, and the injector's own threads
(``primus-lens-*``: the pulse thread that took the stacks, the senders) apart, behind a toggle on
the page; their names come from the stall line's ``threads`` (faulthandler prints only ids).
"""

from __future__ import annotations

import collections
import re
from typing import Any, Dict, List, Sequence, Tuple

from .records import number

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]*)", line \d+ in (?P<func>\S+)')
_THREAD = re.compile(r"^(Current thread|Thread) (?P<id>0x[0-9a-fA-F]+)")
_OURS = "primus-lens-"  # the injector's threads' names (``guard.start_thread``)
_PACKAGE = "primus_lens_inject"  # a nameless thread whose target lives here is ours too
MIN_GROUPING_SECONDS = 60.0
TOP_FRAMES = 3
MAX_STACK_CHARS = 20_000  # per rank and event: a stack is read, not archived


def stack_text(stacks: Any) -> str:
    """A stall line's ``stacks`` as text (faulthandler's; a list or mapping is joined)."""
    if type(stacks) is str:
        return stacks
    if type(stacks) is list:
        return "\n".join(str(item) for item in stacks)
    if type(stacks) is dict:
        return "\n".join(f"{key}:\n{value}" for key, value in stacks.items())
    return ""


def threads(text: str) -> List[List[str]]:
    """Each thread's frames (``file:function``, innermost first) in faulthandler's text."""
    found: List[List[str]] = []
    for line in text.splitlines():
        if _THREAD.match(line):
            found.append([])
            continue
        match = _FRAME.match(line)
        if match:
            if not found:
                found.append([])
            found[-1].append(f"{match.group('file')}:{match.group('func')}")
    return [frames for frames in found if frames]


def _blocks(text: str) -> Tuple[str, List[Tuple[str, List[str]]]]:
    """faulthandler's text cut into (what precedes the first thread, [(thread id, its lines)])."""
    head: List[str] = []
    found: List[Tuple[str, List[str]]] = []
    for line in text.splitlines():
        match = _THREAD.match(line)
        if match:
            found.append((match.group("id").lower(), [line]))
        elif found:
            found[-1][1].append(line)
        else:
            head.append(line)
    return "\n".join(head), found


def _rank_of_thread(name: str, frames: List[str]) -> int:
    """0: the main thread; 1: another thread of the process; 2: one of the injector's."""
    if name == "MainThread" or (frames and frames[-1].endswith(":<module>")):
        return 0
    if name.startswith(_OURS):
        return 2
    if not name:  # no names in the line (a hand-made one): the thread's target says whose it is
        target = [frame for frame in frames if not frame.rpartition(":")[0].endswith("threading.py")]
        if target and _PACKAGE in target[-1].replace("\\", "/").split("/"):
            return 2
    return 1


def ordered(text: str, names: Any) -> Tuple[str, str, int]:
    """A rank's stacks for the page: (the main thread, then the process's other threads; the
    injector's own threads; how many of those), each thread's header naming it where the stall
    line's ``threads`` does."""
    head, blocks = _blocks(text)
    known = names if type(names) is dict else {}
    sorted_blocks = []
    for position, (ident, lines) in enumerate(blocks):
        name = known.get(ident)
        name = name if type(name) is str else ""
        frames = threads("\n".join(lines))
        if name:
            lines = [f"{lines[0]} [{name}]", *lines[1:]]
        sorted_blocks.append((_rank_of_thread(name, frames[0] if frames else []), position, lines))
    sorted_blocks.sort(key=lambda block: (block[0], block[1]))
    shown = [head] if head.strip() else []
    shown += ["\n".join(lines) for rank, _, lines in sorted_blocks if rank < 2]
    own = ["\n".join(lines) for rank, _, lines in sorted_blocks if rank == 2]
    return "\n\n".join(shown), "\n\n".join(own), len(own)


def signature(text: str) -> Tuple[str, ...]:
    """What a rank was doing: the innermost ``TOP_FRAMES`` frames of its main thread (the one
    whose outermost frame is a ``<module>``: the training script), without line numbers; where
    no thread is that, the innermost frame of every thread, sorted.  Other threads (a logger's,
    wandb's) differ from rank to rank and say nothing about the stall."""
    stacks = threads(text)
    main = [frames for frames in stacks if frames[-1].endswith(":<module>")]
    if main:
        return tuple(main[0][:TOP_FRAMES])
    return tuple(sorted(frames[0] for frames in stacks))


def odd_ones(signatures: Dict[int, Tuple[str, ...]]) -> List[int]:
    """The ranks whose signature is not the majority's (module docstring)."""
    if len(signatures) < 3:
        return []
    common, count = collections.Counter(signatures.values()).most_common(1)[0]
    if count * 2 <= len(signatures):
        return []
    return sorted(rank for rank, found in signatures.items() if found != common)


def events(lines: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The page's ``stalls`` section: one entry per event, oldest first."""
    stalls = sorted((x for x in lines if x.get("kind") == "stall"), key=lambda x: x["time"])
    recoveries = [x for x in lines if x.get("kind") == "recovery"]
    grouped: List[List[Dict[str, Any]]] = []
    for line in stalls:
        threshold: Any = line.get("threshold")
        window = max(float(threshold) if number(threshold) else 0.0, MIN_GROUPING_SECONDS)
        if grouped and line["time"] - grouped[-1][0]["time"] <= window:
            grouped[-1].append(line)
        else:
            grouped.append([line])
    return [_event(group, recoveries) for group in grouped]


def _event(group: List[Dict[str, Any]], recoveries: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    by_rank: Dict[int, Dict[str, Any]] = {}
    for line in group:
        by_rank.setdefault(int(line["rank"]), line)  # a rank's first stall line of the event
    texts = {rank: stack_text(line.get("stacks")) for rank, line in by_rank.items()}
    start = min(line["time"] for line in group)
    ranks = []
    for rank, line in sorted(by_rank.items()):
        since = line.get("since")
        stacks, own, own_threads = ordered(texts[rank][:MAX_STACK_CHARS], line.get("threads"))
        recovered = [x for x in recoveries if int(x["rank"]) == rank and x["time"] >= line["time"]]
        ranks.append({
            "rank": rank, "node": line["node"], "local_rank": line["local_rank"], "pid": line["pid"],
            "time": line["time"], "since": since if number(since) else None,
            "threshold": line.get("threshold"), "steps": line.get("steps"),
            "source": str(line.get("source", "")),
            "recovered_after": min(recovered, key=lambda x: x["time"]).get("stalled")
            if recovered else None,
            "stacks": stacks, "own_stacks": own, "own_threads": own_threads,
            "truncated": len(texts[rank]) > MAX_STACK_CHARS,
        })
    return {"start": start, "ranks": ranks,
            "odd": odd_ones({rank: signature(text) for rank, text in texts.items()})}
