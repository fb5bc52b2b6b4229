"""Session store (SQLite): isolation between users, TTL, deletion, eviction; reconcile; history windowing."""

from __future__ import annotations

import threading

import pytest

from gensys.apps.chat.sessions import (
    SessionIdError,
    SessionNotFound,
    SQLiteSessionStore,
    reconcile,
    window_history,
)
from gensys.errors import GensysError


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _msgs(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


def test_create_append_get_roundtrip_on_disk(tmp_path):
    path = tmp_path / "s.sqlite3"
    store = SQLiteSessionStore(path)
    s = store.create("alice")
    assert len(s.id) == 32 and s.messages == []
    store.append("alice", s.id, _msgs(("user", "Hi there"), ("assistant", "Hello!")))
    store.append("alice", s.id, [{"role": "user", "content": "bad", "refused": True}])
    store.close()
    again = SQLiteSessionStore(path)  # persisted
    got = again.get("alice", s.id)
    assert got.messages == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "bad", "refused": True},
    ]
    assert got.title == "Hi there"
    assert again.list("alice")[0]["n_messages"] == 3


def test_other_user_cannot_read_continue_delete_or_claim():
    store = SQLiteSessionStore()
    s = store.create("alice")
    store.append("alice", s.id, _msgs(("user", "secret plan")))
    for op in (
        lambda: store.get("bob", s.id),
        lambda: store.append("bob", s.id, _msgs(("user", "x"))),
        lambda: store.replace("bob", s.id, _msgs(("user", "x"))),
        lambda: store.delete("bob", s.id),
        lambda: store.create("bob", s.id),
    ):
        with pytest.raises(SessionNotFound) as e:
            op()
        assert e.value.http_status == 404 and isinstance(e.value, GensysError)
    assert store.list("bob") == []
    assert store.get("alice", s.id).messages == _msgs(("user", "secret plan"))  # untouched


def test_missing_and_foreign_sessions_look_the_same():
    store = SQLiteSessionStore()
    s = store.create("alice")
    with pytest.raises(SessionNotFound) as foreign:
        store.get("bob", s.id)
    with pytest.raises(SessionNotFound) as missing:
        store.get("bob", "0" * 32)
    assert "alice" not in str(foreign.value)
    assert type(foreign.value) is type(missing.value)


def test_client_chosen_ids_are_checked():
    store = SQLiteSessionStore()
    assert store.create("alice", "my-chat-0001").id == "my-chat-0001"
    with pytest.raises(SessionIdError):
        store.create("alice", "bad id with spaces")
    with pytest.raises(SessionNotFound):  # a live id cannot be created twice
        store.create("alice", "my-chat-0001")


def test_ttl_expiry_and_purge():
    clock = Clock()
    store = SQLiteSessionStore(ttl_s=60, clock=clock)
    a = store.create("alice")
    b = store.create("alice")
    clock.t += 50
    store.append("alice", b.id, _msgs(("user", "still here")))  # refreshes b
    clock.t += 20  # a is 70 s old, b 20 s
    with pytest.raises(SessionNotFound, match="expired"):
        store.get("alice", a.id)
    assert [s["id"] for s in store.list("alice")] == [b.id]
    clock.t += 100
    assert store.purge_expired() == 1
    assert store.list("alice") == []
    # an expired id of the same user can be reused
    assert store.create("alice", b.id).id == b.id


def test_delete_on_request_and_eviction_of_oldest():
    clock = Clock()
    store = SQLiteSessionStore(max_sessions_per_user=2, clock=clock)
    ids = []
    for _ in range(3):
        clock.t += 1
        ids.append(store.create("alice").id)
    assert [s["id"] for s in store.list("alice")] == [ids[2], ids[1]]  # oldest evicted
    store.delete("alice", ids[1])
    with pytest.raises(SessionNotFound):
        store.get("alice", ids[1])
    assert [s["id"] for s in store.list("alice")] == [ids[2]]


def test_replace_rewrites_history():
    store = SQLiteSessionStore()
    s = store.create("u")
    store.append("u", s.id, _msgs(("user", "a"), ("assistant", "b")))
    store.replace("u", s.id, _msgs(("user", "c")))
    assert store.get("u", s.id).messages == _msgs(("user", "c"))


def test_concurrent_appends_keep_every_message():
    store = SQLiteSessionStore()
    s = store.create("u")

    def work(k: int) -> None:
        for i in range(20):
            store.append("u", s.id, _msgs(("user", f"{k}-{i}")))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.get("u", s.id).messages) == 80


def test_reconcile_rules():
    stored = _msgs(("user", "q1"), ("assistant", "a1"))
    # the client resends the whole history plus a new turn
    conv, replace = reconcile(stored, [*stored, *_msgs(("user", "q2"))])
    assert conv == [*stored, *_msgs(("user", "q2"))] and not replace
    # the client sends only the new turn
    conv, replace = reconcile(stored, _msgs(("user", "q2")))
    assert conv == [*stored, *_msgs(("user", "q2"))] and not replace
    # regenerate: the history up to the last user turn
    conv, replace = reconcile(
        [*stored, *_msgs(("user", "q2"), ("assistant", "a2"))], [*stored, *_msgs(("user", "q2"))]
    )
    assert conv == [*stored, *_msgs(("user", "q2"))] and replace
    # an edited history replaces the stored one
    edited = _msgs(("user", "q1 edited"), ("assistant", "a1"), ("user", "q2"))
    assert reconcile(stored, edited) == (edited, True)
    # a new system message replaces the stored one and goes first
    conv, replace = reconcile([*_msgs(("system", "old")), *stored], _msgs(("system", "new"), ("user", "q2")))
    assert conv == [*_msgs(("system", "new")), *stored, *_msgs(("user", "q2"))] and replace


def test_window_keeps_system_and_recent_turns():
    msgs = _msgs(("system", "sys"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2"),
                 ("user", "u3"))  # fmt: skip

    def cost(m: dict) -> int:
        return 10

    kept, dropped = window_history(msgs, cost, 40)
    assert kept == _msgs(("system", "sys"), ("user", "u2"), ("assistant", "a2"), ("user", "u3"))
    assert dropped == 2
    # a window never opens on an orphaned assistant reply
    kept, dropped = window_history(msgs, cost, 30)
    assert kept == _msgs(("system", "sys"), ("user", "u3")) and dropped == 4
    # the message being answered always survives
    kept, _ = window_history(msgs, cost, 5)
    assert kept[-1] == {"role": "user", "content": "u3"}
    kept, dropped = window_history(msgs, cost, 1000)
    assert kept == msgs and dropped == 0


def test_window_summary_mode_notes_dropped_requests():
    msgs = _msgs(("user", "Tell me about rivers"), ("assistant", "Rivers flow."), ("user", "And lakes?"))

    def cost(m: dict) -> int:
        return 3 if m["role"] == "system" else 10

    kept, dropped = window_history(msgs, cost, 18, mode="summary")
    assert dropped == 2
    assert kept[0]["role"] == "system" and "Tell me about rivers" in kept[0]["content"]
    assert kept[-1]["content"] == "And lakes?" and len(kept) == 2
    # the note is left out when it does not fit
    kept, _ = window_history(msgs, cost, 12, mode="summary")
    assert kept == _msgs(("user", "And lakes?"))
