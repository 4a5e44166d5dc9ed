"""The answers the receiver gives: the server's response envelope, gin's plain-text replies,
the garbage a proxy might send, and how one body fared across its workloads."""

from __future__ import annotations

import dataclasses
import http
import json
from typing import Any, Dict, Optional, Tuple

from .schema import dumps


@dataclasses.dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = ""
    headers: Tuple[Tuple[str, str], ...] = ()
    note: str = ""  # the outcome as the requests table records it (meta.message, ...)
    detail: str = ""  # why, where the response does not say (the decode error)
    send: bool = True  # False: the client is gone, close without answering


def envelope(status: int, message: str, data: Any = None) -> Response:
    """The server's ``rest.Response`` (spec §3): meta.code 2000 on success, else the HTTP status;
    map keys in ``data`` sorted as Go marshals maps."""
    meta = dumps({"code": 2000 if status == 200 else status, "message": message})
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    body = f'{{"meta":{meta},"data":{payload},"tracing":null}}'.encode()
    return Response(status, body, "application/json; charset=utf-8", note=message)


def plain(status: int, text: str) -> Response:
    return Response(status, text.encode(), "text/plain", note=text)


def not_found() -> Response:
    return plain(404, "404 page not found")  # gin's default, for a wrong path or method


def control_json(status: int, value: Any) -> Response:
    body = json.dumps(value, default=lambda raw: raw.decode("utf-8", "replace")).encode()
    return Response(status, body, "application/json")


def garbage(status: int) -> Response:
    """What a proxy or a half-dead pod might answer instead of the server: HTML, not JSON."""
    phrase = http.HTTPStatus(status).phrase
    text = (f"<html><head><title>{status} {phrase}</title></head>"
            f"<body><center><h1>{status} {phrase}</h1></center></body></html>\n")
    return Response(status, text.encode(), "text/html", note=f"garbage {status} (fault)")


@dataclasses.dataclass
class Part:
    """How one body (a single request or one batch part) fared across its resolved workloads."""

    workloads: int
    succeeded: int
    count: Optional[int]
    error: str = ""

    def counts(self) -> Dict[str, int]:
        out = {"success_count": self.succeeded, "workloads_count": self.workloads}
        if self.count is not None:
            out["count"] = self.count
        return out

    def batch_result(self) -> Dict[str, Any]:
        if self.succeeded == 0:
            return {"success": False, "error": self.error}
        return {"success": True, **self.counts()}
