"""Who a request says it comes from (spec §9.2): a module of its own, so that building a
detection report (which must stay light to import) needs nothing of the sending machinery."""

from __future__ import annotations

from typing import Any, Dict


def identity(config: Any) -> Dict[str, str]:
    """Identity fields of every body (spec §9.2): pod name, and the workload and pod UIDs only if
    given.  The one definition: rows bodies, detection reports (which leave out an empty pod
    name) and each writer's record of who it is (``owner.Writer``) all take it from here."""
    out = {"pod_name": config.pod_name}
    if config.workload_uid:
        out["workload_uid"] = config.workload_uid
    if config.pod_uid:
        out["pod_uid"] = config.pod_uid
    return out
