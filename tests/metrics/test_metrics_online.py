"""Event log (SQLite, WAL, many writer threads), online metrics, `gensys report` table and charts."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from gensys.metrics import (
    Event,
    EventLog,
    MetricInputError,
    acceptance_rate,
    characters_saved,
    churn_rate,
    click_through_rate,
    completion_rate,
    conversion_rate,
    engagement_rate,
    latency_percentiles,
    retention,
    revenue_per_user,
    thumbs_up_ratio,
    translation_edit_rate,
)
from gensys.metrics.cli import report_main
from gensys.metrics.report import parse_duration

NOW = 1_800_000_000.0
DAY = 86400.0


def _scenario() -> list[Event]:
    """A day of traffic (plus users seen the day before), with counts chosen so every metric is known."""
    ev: list[Event] = []
    t = NOW - DAY / 2
    for i in range(10):  # compose: 10 impressions, 4 accepts of 5/6/7/8 chars, 1 click, 2 rejects
        ev.append(Event(t + i, "compose", "impression", user=f"u{i % 4}", session=f"s{i % 5}"))
    for i, n in enumerate((5, 6, 7, 8)):
        ev.append(Event(t + 20 + i, "compose", "accept", user="u0", session="s0", meta={"chars": n}))
    ev += [Event(t + 30, "compose", "reject", user="u1", session="s1")] * 2
    ev.append(Event(t + 31, "compose", "click", user="u1", session="s1"))
    ev.append(Event(t + 32, "compose", "conversion", user="u1", session="s1", value=12.5))
    for i in range(3):
        ev.append(Event(t + 40 + i, "chat", "thumbs_up", user="u2", session="s2"))
    ev.append(Event(t + 50, "chat", "thumbs_down", user="u2", session="s2"))
    ev.append(Event(t + 51, "chat", "session_start", user="u2", session="s9"))
    ev.append(Event(t + 52, "chat", "session_start", user="u3", session="s8"))
    ev.append(Event(t + 53, "chat", "complete", user="u2", session="s9"))
    # translate: 1 substitution in 4 words + 1 insertion into 3 -> 2 edits / 8 edited words
    ev.append(
        Event(t + 60, "translate", "edit", user="u3", meta={"original": "a b c d", "edited": "a x c d"})
    )
    ev.append(Event(t + 61, "translate", "edit", user="u3", meta={"original": "e f g", "edited": "e f h g"}))
    for i in range(1, 101):  # latencies 1..100 ms
        ev.append(Event(t + 100 + i, "translate", "request", latency_ms=float(i)))
    # yesterday: u0, u1 and u7 were active; u7 does not come back
    ev += [Event(NOW - 1.5 * DAY, "chat", "request", user=u, latency_ms=5.0) for u in ("u0", "u1", "u7")]
    ev.append(Event(NOW - 3 * DAY, "compose", "click", user="old"))  # outside both windows
    return ev


def test_online_metrics_on_a_known_scenario() -> None:
    ev, since, until = _scenario(), NOW - DAY, NOW
    assert click_through_rate(ev, since, until, system="compose").value == pytest.approx(1 / 10)
    assert conversion_rate(ev, since, until).value == 1.0
    assert acceptance_rate(ev, since, until).value == pytest.approx(4 / 10)
    cs = characters_saved(ev, since, until)
    assert (cs.numerator, cs.denominator) == (26, 4)
    assert thumbs_up_ratio(ev, since, until).value == pytest.approx(3 / 4)
    assert completion_rate(ev, since, until).value == pytest.approx(1 / 2)
    assert translation_edit_rate(ev, since, until).value == pytest.approx(2 / 8)
    lat = latency_percentiles(ev, since, until)
    assert (lat["p50"], lat["p90"], lat["p99"], lat["n"]) == pytest.approx((50.5, 90.1, 99.01, 100))
    # sessions s0..s4, s8, s9 seen; engaged: s0 (accept), s1 (click...), s2 (thumbs)
    assert engagement_rate(ev, since, until).value == pytest.approx(3 / 7)
    assert revenue_per_user(ev, since, until).value == pytest.approx(12.5 / 4)  # users u0..u3
    assert retention(ev, since, until).value == pytest.approx(2 / 3)  # u0, u1 of {u0, u1, u7}
    assert churn_rate(ev, since, until).value == pytest.approx(1 / 3)
    assert click_through_rate(ev, since, until, system="rag").value is None  # no data is not 0


def test_event_log_many_threads_wal_and_filters(tmp_path) -> None:
    db = tmp_path / "events.sqlite"
    log = EventLog(db)

    def writer(k: int) -> None:
        for i in range(100):
            log.log("chat", "request", user=f"t{k}", latency_ms=float(i), meta={"k": k}, ts=NOW + i)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert log.count() == 800
    assert len(log.events(NOW + 50, NOW + 60, system="chat", event="request")) == 80
    assert log.events(NOW, NOW + 1)[0].meta["k"] in range(8)
    with pytest.raises(MetricInputError, match="unknown event"):
        log.log("chat", "thumbsup")
    log.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_report_table_and_charts(tmp_path, capsys) -> None:
    db = tmp_path / "ev.sqlite"
    with EventLog(db) as log:
        log.log_many(_scenario())
    from gensys.metrics.report import run_report

    text = run_report(str(db), "1d", str(tmp_path / "png"), now=NOW)
    assert "acceptance_rate" in text and "compose" in text and "latency_p99_ms" in text
    assert "0.4" in text.split("acceptance_rate")[1].splitlines()[0]
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert "acceptance_rate.png" in pngs and "latency_p90_ms.png" in pngs
    assert all((tmp_path / "png" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    # the CLI entry point: a window with no events prints a clear line, a missing db exits 2
    assert report_main(["--db", str(db), "--since", "1h"]) == 0
    assert "no events" in capsys.readouterr().out
    assert report_main(["--db", str(tmp_path / "none.sqlite")]) == 2
    assert "event log not found" in capsys.readouterr().err
    assert report_main(["--db", str(db), "--since", "yesterday"]) == 2
    assert parse_duration("90s") == 90 and parse_duration("2w") == 14 * DAY
