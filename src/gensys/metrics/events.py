"""The online event log: what the servers record, one SQLite table, safe to write from many threads.

Schema (table `events`): id, ts (unix seconds, float), system, event, user, session, request_id,
latency_ms, value, meta (JSON text). Indexed on ts and (system, event, ts).
Event names the servers use (anything else is rejected, so a typo cannot silently create a new metric):
  impression  a suggestion/result was shown           accept / reject  the user took / dismissed it
  click       a shown item was clicked                conversion       a goal was reached (value = revenue)
  thumbs_up / thumbs_down  chat feedback              copy             the user copied an answer
  edit        the user corrected an output (meta: {"original": ..., "edited": ...})
  request     a served request (latency_ms)           session_start / session_end / complete
Systems: compose, translate, chat, caption, rag (free text; the report groups by it).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gensys.metrics.inputs import MetricInputError

EVENT_NAMES = (
    "impression", "accept", "reject", "click", "conversion", "thumbs_up", "thumbs_down", "copy", "edit",
    "request", "session_start", "session_end", "complete",
)  # fmt: skip
DEFAULT_DB = os.environ.get("GENSYS_EVENTS_DB", "gensys_events.sqlite")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    system TEXT NOT NULL,
    event TEXT NOT NULL,
    user TEXT,
    session TEXT,
    request_id TEXT,
    latency_ms REAL,
    value REAL,
    meta TEXT
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_system_event_ts ON events (system, event, ts);
"""
_COLUMNS = "ts, system, event, user, session, request_id, latency_ms, value, meta"


@dataclass(frozen=True)
class Event:
    """One logged event (a row of the table)."""

    ts: float
    system: str
    event: str
    user: str | None = None
    session: str | None = None
    request_id: str | None = None
    latency_ms: float | None = None
    value: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class EventLog:
    """Append-only event log over one SQLite file (WAL mode, so readers never block the writing server)."""

    def __init__(self, path: str | os.PathLike = DEFAULT_DB) -> None:
        self.path = os.fspath(path)
        if self.path != ":memory:" and os.path.dirname(self.path):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # one connection shared by all threads; the lock serialises writes (SQLite has a single writer anyway)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)

    def log(
        self,
        system: str,
        event: str,
        *,
        user: str | None = None,
        session: str | None = None,
        request_id: str | None = None,
        latency_ms: float | None = None,
        value: float | None = None,
        meta: dict[str, Any] | None = None,
        ts: float | None = None,
    ) -> None:
        """Record one event; `ts` defaults to now (unix seconds)."""
        if event not in EVENT_NAMES:
            raise MetricInputError(f"unknown event {event!r}; known: {', '.join(EVENT_NAMES)}")
        row = (
            time.time() if ts is None else float(ts), system, event, user, session, request_id,
            None if latency_ms is None else float(latency_ms), None if value is None else float(value),
            json.dumps(meta, ensure_ascii=False) if meta else None,
        )  # fmt: skip
        with self._lock:
            self._conn.execute(f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def log_many(self, events: Sequence[Event]) -> None:
        """Record many events in one transaction (tests, imports)."""
        for e in events:
            if e.event not in EVENT_NAMES:
                raise MetricInputError(f"unknown event {e.event!r}")
        rows = [
            (e.ts, e.system, e.event, e.user, e.session, e.request_id, e.latency_ms, e.value,
             json.dumps(e.meta, ensure_ascii=False) if e.meta else None)
            for e in events
        ]  # fmt: skip
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
            self._conn.execute("COMMIT")

    def events(
        self,
        since: float | None = None,
        until: float | None = None,
        *,
        system: str | None = None,
        event: str | None = None,
    ) -> list[Event]:
        """Events with since <= ts < until (either bound optional), oldest first."""
        return list(self.iter_events(since, until, system=system, event=event))

    def iter_events(
        self,
        since: float | None = None,
        until: float | None = None,
        *,
        system: str | None = None,
        event: str | None = None,
    ) -> Iterator[Event]:
        where, args = [], []
        for cond, val in (
            ("ts >= ?", since),
            ("ts < ?", until),
            ("system = ?", system),
            ("event = ?", event),
        ):
            if val is not None:
                where.append(cond)
                args.append(val)
        sql = f"SELECT {_COLUMNS} FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY ts, id", args).fetchall()
        for r in rows:
            yield Event(*r[:8], meta=json.loads(r[8]) if r[8] else {})

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
