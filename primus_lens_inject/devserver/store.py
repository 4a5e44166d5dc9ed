"""Every request seen and every row accepted, in one SQLite database, merged per step the way
the server keeps ``training_performance``; OTLP data points beside them."""

from __future__ import annotations

import datetime
import json
import sqlite3
import threading
from typing import Any, Dict, List, Mapping, Sequence

from . import godecode
from .schema import Accepted, RequestRow, StepWrite, dumps

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, received REAL, method TEXT, path TEXT,
    status INTEGER, message TEXT, detail TEXT, body BLOB);
CREATE TABLE IF NOT EXISTS logs (id INTEGER PRIMARY KEY, request_id INTEGER, received REAL,
    workload TEXT, pod TEXT, pod_uid TEXT, run_id TEXT, step INTEGER, timestamp REAL, data TEXT);
CREATE TABLE IF NOT EXISTS metrics (id INTEGER PRIMARY KEY, request_id INTEGER, received REAL,
    workload TEXT, pod TEXT, pod_uid TEXT, run_id TEXT, name TEXT, value REAL, step INTEGER,
    timestamp REAL, tags TEXT);
CREATE TABLE IF NOT EXISTS detections (id INTEGER PRIMARY KEY, request_id INTEGER, received REAL,
    workload TEXT, pod TEXT, pod_uid TEXT, namespace TEXT, timestamp REAL, data TEXT);
CREATE TABLE IF NOT EXISTS otlp (id INTEGER PRIMARY KEY, request_id INTEGER, received REAL,
    resource TEXT, scope TEXT, name TEXT, description TEXT, unit TEXT, kind TEXT,
    start_time INTEGER, time INTEGER, value /* no type: an int stays an int */, attributes TEXT);
CREATE TABLE IF NOT EXISTS steps (workload TEXT, iteration INTEGER, writes INTEGER, data TEXT,
    PRIMARY KEY (workload, iteration));
"""
_TABLES = ("requests", "logs", "metrics", "detections", "steps", "otlp")
_JSON_COLUMNS = {"data", "tags", "resource", "attributes"}
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _rfc3339(seconds: float) -> str:
    """Go's ``time.Unix(0, int64(ts*1e9))`` in RFC 3339, UTC; out of range (milliseconds sent as
    seconds) gives the minimum int64, i.e. the year 1677, as on the server's amd64 build."""
    nanos = seconds * 1e9
    nanos = int(nanos) if godecode.INT64_MIN <= nanos < 2**63 else godecode.INT64_MIN
    return (_EPOCH + datetime.timedelta(microseconds=nanos // 1000)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int32(step: int) -> int:
    """The server keys rows by ``iteration``, an int32 conversion of the step (larger values wrap)."""
    return (step + 2**31) % 2**32 - 2**31


class Store:
    """Every request seen and every row accepted, in one SQLite database.

    One connection behind one lock: requests arrive on many threads, and several connections would
    only add SQLite's busy waits.  A file database is kept in WAL mode so a test can read it while
    the receiver runs, and survives a restart (or a SIGKILL) of the receiver.
    """

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def commit(self, request: RequestRow, accepted: Accepted) -> None:
        with self._lock, self._db:
            request_id = self._db.execute(_insert_sql("requests", request._fields), request).lastrowid
            fixed = (request_id, request.received)
            for table, rows in (("logs", accepted.logs), ("metrics", accepted.metrics),
                                ("detections", accepted.detections), ("otlp", accepted.otlp)):
                if rows:
                    sql = _insert_sql(table, ("request_id", "received", *rows[0]._fields))
                    self._db.executemany(sql, [fixed + row for row in rows])
            for write in accepted.steps:
                self._upsert_step(write)

    def _upsert_step(self, write: StepWrite) -> None:
        """``training_performance`` as the server keeps it (spec §8.1): one row per (workload,
        step) whatever the run or pod; a repeat overlays its keys (new wins), keeps ``created_at``
        and sets ``updated_at``.  The server's ``history`` snapshots are reduced to a count."""
        key = (write.workload, _int32(write.step))
        stamp = _rfc3339(write.timestamp)
        fields = {"source": "wandb", "run_id": write.run_id, "step": write.step, **write.data}
        where = "WHERE workload = ? AND iteration = ?"
        row = self._db.execute(f"SELECT data FROM steps {where}", key).fetchone()
        if row is None:
            data = dumps({**fields, "created_at": stamp})
            self._db.execute("INSERT INTO steps VALUES (?, ?, 1, ?)", (*key, data))
            return
        old = json.loads(row[0])
        merged = {**old, **fields, "created_at": old["created_at"], "updated_at": stamp}
        self._db.execute(f"UPDATE steps SET writes = writes + 1, data = ? {where}", (dumps(merged), *key))

    def select(self, table: str, filters: Mapping[str, Any], order: str = "rowid") -> List[Dict[str, Any]]:
        """Rows of ``table`` whose columns equal every filter that is not None, JSON decoded."""
        used = {column: value for column, value in filters.items() if value is not None}
        where = " AND ".join(f"{column} = ?" for column in used)
        sql = f"SELECT * FROM {table}{' WHERE ' + where if where else ''} ORDER BY {order}"
        with self._lock:
            cursor = self._db.execute(sql, tuple(used.values()))
            columns = [description[0] for description in cursor.description]
            rows = cursor.fetchall()
        return [{column: json.loads(value) if column in _JSON_COLUMNS else value
                 for column, value in zip(columns, row)} for row in rows]

    def stats(self) -> Dict[str, Any]:
        with self._lock:
            by_path: Dict[str, Dict[str, int]] = {}
            for path, status, count in self._db.execute("SELECT path, status, COUNT(*) FROM requests "
                                                        "GROUP BY path, status ORDER BY path, status"):
                by_path.setdefault(path, {})[str(status)] = count
            rows = {table: self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                    for table in _TABLES[1:]}
        return {"requests": by_path, **rows}

    def reset(self) -> None:
        with self._lock, self._db:
            for table in _TABLES:
                self._db.execute(f"DELETE FROM {table}")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _insert_sql(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
