"""Online metrics computed from the event log (`gensys.metrics.events`) over a time window.

Every function takes the events (any iterable of `Event`) and an optional window since <= ts < until and,
where it makes sense, a `system`. Rates return a `Rate` with numerator and denominator so a report can show
how much data stands behind a number; a rate with a zero denominator has value None ("no data"), never 0.

Definitions:
- click-through rate = clicks / impressions; conversion rate = conversions / clicks (post-click);
- latency percentiles p50/p90/p99 of `request.latency_ms` (linear interpolation, numpy's default);
- engagement rate = sessions with an engagement event (click, accept, copy, thumbs_up/down, edit, conversion)
  / sessions seen (distinct session ids);
- revenue per user = sum of `conversion.value` / distinct active users;
- retention = users active in the previous window of equal length who are active again in this one / users of
  the previous window; churn rate = 1 - retention;
- completion rate = complete / session_start;
- Smart Compose: acceptance rate = accept / impression; characters saved = sum over accepts of meta["chars"]
  (or the length of meta["text"]);
- chat: thumbs-up ratio = thumbs_up / (thumbs_up + thumbs_down);
- translation edit rate = word-level edit distance(original, edited) summed over `edit` events / words of the
  edited texts (HTER without block shifts).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from gensys.metrics.events import Event

ENGAGEMENT_EVENTS = frozenset({"click", "accept", "copy", "thumbs_up", "thumbs_down", "edit", "conversion"})


@dataclass(frozen=True)
class Rate:
    """numerator / denominator; `value` is None when the denominator is 0."""

    numerator: float
    denominator: float

    @property
    def value(self) -> float | None:
        return self.numerator / self.denominator if self.denominator else None


def _select(
    events: Iterable[Event], since: float | None, until: float | None, system: str | None
) -> list[Event]:
    return [
        e
        for e in events
        if (since is None or e.ts >= since)
        and (until is None or e.ts < until)
        and (system is None or e.system == system)
    ]


def _count(events: list[Event], name: str) -> int:
    return sum(1 for e in events if e.event == name)


def click_through_rate(events: Iterable[Event], since=None, until=None, system: str | None = None) -> Rate:
    """clicks / impressions."""
    ev = _select(events, since, until, system)
    return Rate(_count(ev, "click"), _count(ev, "impression"))


def conversion_rate(events: Iterable[Event], since=None, until=None, system: str | None = None) -> Rate:
    """conversions / clicks."""
    ev = _select(events, since, until, system)
    return Rate(_count(ev, "conversion"), _count(ev, "click"))


def latency_percentiles(
    events: Iterable[Event],
    since=None,
    until=None,
    system: str | None = None,
    q: tuple[int, ...] = (50, 90, 99),
) -> dict[str, float | None]:
    """{"p50": ms, "p90": ms, "p99": ms, "n": count} over `request` events with a latency."""
    lat = [
        e.latency_ms
        for e in _select(events, since, until, system)
        if e.event == "request" and e.latency_ms is not None
    ]
    out: dict[str, float | None] = {f"p{p}": (float(np.percentile(lat, p)) if lat else None) for p in q}
    out["n"] = float(len(lat))
    return out


def engagement_rate(events: Iterable[Event], since=None, until=None, system: str | None = None) -> Rate:
    """Sessions with at least one engagement event / distinct sessions."""
    ev = _select(events, since, until, system)
    sessions = {e.session for e in ev if e.session is not None}
    engaged = {e.session for e in ev if e.session is not None and e.event in ENGAGEMENT_EVENTS}
    return Rate(len(engaged), len(sessions))


def revenue_per_user(events: Iterable[Event], since=None, until=None, system: str | None = None) -> Rate:
    """Summed conversion value / distinct active users."""
    ev = _select(events, since, until, system)
    revenue = sum(e.value for e in ev if e.event == "conversion" and e.value is not None)
    return Rate(revenue, len({e.user for e in ev if e.user is not None}))


def retention(events: Iterable[Event], since: float, until: float, system: str | None = None) -> Rate:
    """Users of [since - (until - since), since) seen again in [since, until) / users of that window."""
    ev = list(events)
    prev = {e.user for e in _select(ev, since - (until - since), since, system) if e.user is not None}
    cur = {e.user for e in _select(ev, since, until, system) if e.user is not None}
    return Rate(len(prev & cur), len(prev))


def churn_rate(events: Iterable[Event], since: float, until: float, system: str | None = None) -> Rate:
    """1 - retention: users of the previous window not seen in this one / users of the previous window."""
    r = retention(events, since, until, system)
    return Rate(r.denominator - r.numerator, r.denominator)


def completion_rate(events: Iterable[Event], since=None, until=None, system: str | None = None) -> Rate:
    """complete / session_start."""
    ev = _select(events, since, until, system)
    return Rate(_count(ev, "complete"), _count(ev, "session_start"))


def acceptance_rate(events: Iterable[Event], since=None, until=None, system: str | None = "compose") -> Rate:
    """Smart Compose: accepted suggestions / shown suggestions."""
    ev = _select(events, since, until, system)
    return Rate(_count(ev, "accept"), _count(ev, "impression"))


def characters_saved(events: Iterable[Event], since=None, until=None, system: str | None = "compose") -> Rate:
    """Smart Compose: characters the user did not type (numerator) over accepted suggestions (denominator)."""
    ev = [e for e in _select(events, since, until, system) if e.event == "accept"]
    chars = sum(int(e.meta.get("chars", len(e.meta.get("text", "")))) for e in ev)
    return Rate(chars, len(ev))


def thumbs_up_ratio(events: Iterable[Event], since=None, until=None, system: str | None = "chat") -> Rate:
    """Chat: thumbs_up / (thumbs_up + thumbs_down)."""
    ev = _select(events, since, until, system)
    up = _count(ev, "thumbs_up")
    return Rate(up, up + _count(ev, "thumbs_down"))


def word_edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two word sequences (insert, delete, substitute cost 1)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def translation_edit_rate(
    events: Iterable[Event], since=None, until=None, system: str | None = "translate"
) -> Rate:
    """Word edits users made to translations / words of their edited versions."""
    edits, words = 0, 0
    for e in _select(events, since, until, system):
        if e.event == "edit" and "original" in e.meta and "edited" in e.meta:
            edited = str(e.meta["edited"]).split()
            edits += word_edit_distance(str(e.meta["original"]).split(), edited)
            words += len(edited)
    return Rate(edits, words)


RATE_METRICS = {
    "click_through_rate": click_through_rate,
    "conversion_rate": conversion_rate,
    "engagement_rate": engagement_rate,
    "revenue_per_user": revenue_per_user,
    "completion_rate": completion_rate,
    "acceptance_rate": acceptance_rate,
    "characters_saved_per_accept": characters_saved,
    "thumbs_up_ratio": thumbs_up_ratio,
    "translation_edit_rate": translation_edit_rate,
}


@dataclass(frozen=True)
class Row:
    metric: str
    system: str
    value: float | None
    numerator: float
    denominator: float


def summary(events: Iterable[Event], since: float, until: float) -> list[Row]:
    """All online metrics for each system present in [since, until), then for all systems together ("*")."""
    ev = list(events)
    window = _select(ev, since, until, None)
    systems = sorted({e.system for e in window})
    rows: list[Row] = []
    for system in [*systems, None]:
        name = system or "*"
        for metric, fn in RATE_METRICS.items():
            r = fn(window, since, until, system=system)
            if r.denominator:  # skip metrics this system has no data for
                rows.append(Row(metric, name, r.value, r.numerator, r.denominator))
        lat = latency_percentiles(window, since, until, system)
        if lat["n"]:
            for k in ("p50", "p90", "p99"):
                rows.append(Row(f"latency_{k}_ms", name, lat[k], 0.0, lat["n"] or 0.0))
        for metric, fn2 in (("retention", retention), ("churn_rate", churn_rate)):
            r = fn2(ev, since, until, system)
            if r.denominator:
                rows.append(Row(metric, name, r.value, r.numerator, r.denominator))
    return rows
