"""Session management: conversations stored per user, windowed to the model's context, expiring after a TTL.

`SessionStore` is the one interface the pipeline uses; `SQLiteSessionStore` implements it on a single SQLite
file (or `:memory:`). A PostgreSQL store would implement the same six methods on the same two tables.

Isolation: every read and write names the user, and a session that belongs to another user behaves exactly
like one that does not exist (`SessionNotFound`, HTTP 404), so ids cannot be probed. Ids are 128-bit random
(clients may choose their own, e.g. the chat page; an id already owned by someone else is refused).

Schema (one row per message, so appending a turn is one INSERT):

    sessions(id TEXT PK, user TEXT, title TEXT, created REAL, updated REAL)
    messages(session_id TEXT, seq INTEGER, role TEXT, content TEXT, refused INTEGER, created REAL,
             PRIMARY KEY (session_id, seq))
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gensys.errors import GensysError

Message = dict[str, Any]  # {"role", "content"} (+ "refused": bool for stored assistant turns)
_ID = re.compile(r"^[A-Za-z0-9_\-]{8,128}$")


class SessionNotFound(GensysError):
    """No such session for this user (it never existed, expired, was deleted, or is someone else's)."""

    http_status = 404


class SessionIdError(GensysError):
    """A client-chosen session id that is malformed."""

    http_status = 400


@dataclass
class SessionConfig:
    """Where conversations live and for how long; how history is fitted into the model's context."""

    db_path: str = "runs/chat/sessions.sqlite3"  # "" (or ":memory:") keeps them in this process only
    ttl_s: float = 7 * 24 * 3600.0  # a session unused this long is gone (0 = never expires)
    max_sessions_per_user: int = 100  # the oldest are deleted beyond this
    history: str = "drop"  # "drop" the oldest turns, or "summary": replace them by a short note
    summary_chars: int = 300  # length cap of that note

    def __post_init__(self) -> None:
        if self.history not in ("drop", "summary"):
            raise ValueError(f"history must be 'drop' or 'summary', got {self.history!r}")


@dataclass
class Session:
    """A stored conversation."""

    id: str
    user: str
    title: str
    created: float
    updated: float
    messages: list[Message] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What a session list shows."""
        return {
            "id": self.id,
            "title": self.title,
            "created": self.created,
            "updated": self.updated,
            "n_messages": len(self.messages),
        }


class SessionStore(Protocol):
    """What the chat pipeline needs from a session store (SQLite here; PostgreSQL at scale)."""

    def create(self, user: str, session_id: str | None = None) -> Session: ...

    def get(self, user: str, session_id: str) -> Session: ...

    def append(self, user: str, session_id: str, messages: Sequence[Message]) -> None: ...

    def replace(self, user: str, session_id: str, messages: Sequence[Message]) -> None: ...

    def list(self, user: str) -> list[dict[str, Any]]: ...

    def delete(self, user: str, session_id: str) -> None: ...

    def purge_expired(self) -> int: ...


class SQLiteSessionStore:
    """`SessionStore` on one SQLite database. Thread-safe (one connection behind a lock: the server calls
    the pipeline from worker threads); writes are transactions."""

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        ttl_s: float = 0.0,
        max_sessions_per_user: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        path = str(path) or ":memory:"  # "" = in memory too (nothing persisted)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.ttl_s = ttl_s
        self.max_sessions_per_user = max_sessions_per_user
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA foreign_keys = ON")
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode = WAL")  # readers never wait for a writer
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS sessions (
                id TEXT PRIMARY KEY, user TEXT NOT NULL, title TEXT NOT NULL,
                created REAL NOT NULL, updated REAL NOT NULL);
            CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user, updated);
            CREATE TABLE IF NOT EXISTS messages (
                session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
                seq INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
                refused INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL,
                PRIMARY KEY (session_id, seq));
            """
        )

    @classmethod
    def from_config(cls, cfg: SessionConfig, clock: Callable[[], float] = time.time) -> SQLiteSessionStore:
        return cls(cfg.db_path, ttl_s=cfg.ttl_s, max_sessions_per_user=cfg.max_sessions_per_user, clock=clock)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- helpers -------------------------------------------------------------------------------------------
    def _expired(self, updated: float) -> bool:
        return self.ttl_s > 0 and self.clock() - updated > self.ttl_s

    def _owned(self, user: str, session_id: str) -> tuple[str, float, float]:
        """(title, created, updated) of a live session of `user`; SessionNotFound otherwise (lock held)."""
        row = self._db.execute(
            "SELECT user, title, created, updated FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
        if row is None or row[0] != user:
            raise SessionNotFound(f"no session {session_id!r} for this user")
        if self._expired(row[3]):
            self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            raise SessionNotFound(f"session {session_id!r} has expired")
        return row[1], row[2], row[3]

    def _insert(self, session_id: str, start: int, messages: Sequence[Message], now: float) -> None:
        rows = [
            (session_id, start + i, m["role"], m["content"], int(bool(m.get("refused"))), now)
            for i, m in enumerate(messages)
        ]
        self._db.executemany(
            "INSERT INTO messages (session_id, seq, role, content, refused, created) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )

    @staticmethod
    def _title(messages: Sequence[Message]) -> str:
        first = next((m["content"] for m in messages if m["role"] == "user"), "")
        title = " ".join(first.split())
        return title[:60] + ("…" if len(title) > 60 else "")

    # ---- the interface -------------------------------------------------------------------------------------
    def create(self, user: str, session_id: str | None = None) -> Session:
        """A new empty session of `user` (id chosen here unless given; a taken id is refused)."""
        if session_id is not None and not _ID.match(session_id):
            raise SessionIdError("session_id must be 8-128 characters of letters, digits, '-' or '_'")
        sid = session_id or uuid.uuid4().hex
        now = self.clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT user, updated FROM sessions WHERE id = ?", (sid,)).fetchone()
                if row is not None:
                    if row[0] != user or not self._expired(row[1]):
                        # another user's id (or a live one of this user) cannot be re-created
                        raise SessionNotFound(f"session id {sid!r} is not available")
                    self._db.execute("DELETE FROM sessions WHERE id = ?", (sid,))
                self._db.execute(
                    "INSERT INTO sessions (id, user, title, created, updated) VALUES (?, ?, '', ?, ?)",
                    (sid, user, now, now),
                )
                self._evict_oldest(user)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return Session(sid, user, "", now, now, [])

    def _evict_oldest(self, user: str) -> None:
        self._db.execute(
            "DELETE FROM sessions WHERE user = ? AND id NOT IN "
            "(SELECT id FROM sessions WHERE user = ? ORDER BY updated DESC LIMIT ?)",
            (user, user, self.max_sessions_per_user),
        )

    def get(self, user: str, session_id: str) -> Session:
        """The session with its messages, oldest first."""
        with self._lock:
            title, created, updated = self._owned(user, session_id)
            rows = self._db.execute(
                "SELECT role, content, refused FROM messages WHERE session_id = ? ORDER BY seq", (session_id,)
            ).fetchall()
        msgs = [{"role": r, "content": c, **({"refused": True} if f else {})} for r, c, f in rows]
        return Session(session_id, user, title, created, updated, msgs)

    def append(self, user: str, session_id: str, messages: Sequence[Message]) -> None:
        """Add messages at the end of the session (and refresh its TTL)."""
        self._write(user, session_id, messages, replace=False)

    def replace(self, user: str, session_id: str, messages: Sequence[Message]) -> None:
        """Make `messages` the session's whole history (a client that edited or regenerated a turn)."""
        self._write(user, session_id, messages, replace=True)

    def _write(self, user: str, session_id: str, messages: Sequence[Message], replace: bool) -> None:
        now = self.clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                title, _, _ = self._owned(user, session_id)
                if replace:
                    self._db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
                    start = 0
                else:
                    (last,) = self._db.execute(
                        "SELECT COALESCE(MAX(seq), -1) FROM messages WHERE session_id = ?", (session_id,)
                    ).fetchone()
                    start = last + 1
                self._insert(session_id, start, messages, now)
                if not title or replace:
                    title = self._title(
                        messages
                        if replace
                        else [
                            {"role": r, "content": c}
                            for r, c in self._db.execute(
                                "SELECT role, content FROM messages WHERE session_id = ? ORDER BY seq",
                                (session_id,),
                            )
                        ]
                    )
                self._db.execute(
                    "UPDATE sessions SET updated = ?, title = ? WHERE id = ?", (now, title, session_id)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def list(self, user: str) -> list[dict[str, Any]]:
        """Summaries of the user's live sessions, most recently used first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.id, s.title, s.created, s.updated, COUNT(m.seq) FROM sessions s "
                "LEFT JOIN messages m ON m.session_id = s.id WHERE s.user = ? "
                "GROUP BY s.id ORDER BY s.updated DESC",
                (user,),
            ).fetchall()
        return [
            {"id": i, "title": t, "created": c, "updated": u, "n_messages": n}
            for i, t, c, u, n in rows
            if not self._expired(u)
        ]

    def delete(self, user: str, session_id: str) -> None:
        """Delete the session and its messages (on the user's request)."""
        with self._lock:
            self._owned(user, session_id)
            self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def purge_expired(self) -> int:
        """Delete every expired session; returns how many."""
        if self.ttl_s <= 0:
            return 0
        with self._lock:
            cur = self._db.execute("DELETE FROM sessions WHERE updated < ?", (self.clock() - self.ttl_s,))
            return cur.rowcount


# ---------------------------------------------------------------------------------------------------------
# history windowing


def window_history(
    messages: Sequence[Message],
    count_tokens: Callable[[Message], int],
    budget: int,
    *,
    mode: str = "drop",
    summary_chars: int = 300,
) -> tuple[list[Message], int]:
    """Fit a conversation into `budget` tokens: keep the system message(s) and the most recent turns.

    Turns are dropped oldest first, but never the last message (the one being answered). With
    `mode="summary"` the dropped turns are replaced by one system note listing the beginnings of the
    earlier user requests (extractive: no model call), when it fits. Returns (messages, dropped count).
    """
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    if not turns:
        return list(system), 0
    fixed = sum(count_tokens(m) for m in system)
    kept: list[Message] = [turns[-1]]
    used = fixed + count_tokens(turns[-1])
    for m in reversed(turns[:-1]):
        cost = count_tokens(m)
        if used + cost > budget:
            break
        kept.insert(0, m)
        used += cost
    dropped = turns[: len(turns) - len(kept)]
    # a window should not open on an assistant reply whose question was cut away
    while len(kept) > 1 and kept[0]["role"] == "assistant":
        dropped.append(kept.pop(0))
        used -= count_tokens(dropped[-1])
    if dropped and mode == "summary":
        note = _summary_note(dropped, summary_chars)
        if note is not None and used + count_tokens(note) <= budget:
            return [*system, note, *kept], len(dropped)
    return [*system, *kept], len(dropped)


def _summary_note(dropped: Sequence[Message], max_chars: int) -> Message | None:
    asks = [
        " ".join(m["content"].split())[:80] for m in dropped if m["role"] == "user" and not m.get("refused")
    ]
    if not asks:
        return None
    text = "Earlier in this conversation the user asked: " + "; ".join(asks)
    return {"role": "system", "content": text[:max_chars]}


def reconcile(stored: Sequence[Message], incoming: Sequence[Message]) -> tuple[list[Message], bool]:
    """The conversation to answer, given a session's stored history and the messages a client sent.

    OpenAI-style clients resend the whole history each turn; others send only the new turn. Rules:
    - `incoming` extends `stored` (stored is a prefix): the client resent history -> `incoming`.
    - `incoming` is a prefix of `stored` (a "regenerate": the history up to a user turn) -> `incoming`,
      and the stored history is replaced.
    - `incoming` has no assistant turn (just new user/system messages) -> `stored` + `incoming`
      (a system message in `incoming` replaces the stored one).
    - otherwise the client's history diverged (an edited turn) -> `incoming`, replacing the stored one.
    Returns (conversation, replace_stored).
    """
    s = [(m["role"], m["content"]) for m in stored]
    i = [(m["role"], m["content"]) for m in incoming]
    if i[: len(s)] == s:
        return list(incoming), False
    if s[: len(i)] == i:
        return list(incoming), True
    if not any(m["role"] == "assistant" for m in incoming):
        new_system = [m for m in incoming if m["role"] == "system"]
        if not new_system:
            return [*stored, *incoming], False
        rest = [m for m in [*stored, *incoming] if m["role"] != "system"]
        return [*new_system, *rest], True
    return list(incoming), True


__all__ = [
    "SQLiteSessionStore",
    "Session",
    "SessionConfig",
    "SessionIdError",
    "SessionNotFound",
    "SessionStore",
    "reconcile",
    "window_history",
]
