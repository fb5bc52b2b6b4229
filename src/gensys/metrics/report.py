"""`gensys report`: the online metrics of a recent window as a table, and PNG charts of them over time."""

from __future__ import annotations

import os
import re
import time

from gensys.metrics.events import Event, EventLog
from gensys.metrics.inputs import MetricInputError
from gensys.metrics.online import RATE_METRICS, latency_percentiles, summary

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'90s', '15m', '12h', '1d', '2w' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise MetricInputError(
            f"bad duration {text!r}: use a positive number and a unit s, m, h, d or w (e.g. 1d)"
        )
    return float(m.group(1)) * _UNITS[m.group(2)]


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def report(events: list[Event], since: float, until: float) -> str:
    """The summary table of `events` in [since, until) (events before `since` feed retention)."""
    rows = summary(events, since, until)
    if not rows:
        return "no events in the window"
    body = [
        (
            r.metric,
            r.system,
            "n/a" if r.value is None else f"{r.value:.4g}",
            f"{r.numerator:g}/{r.denominator:g}",
        )
        for r in rows
    ]
    return format_table(body, ("metric", "system", "value", "num/den"))


def write_charts(events: list[Event], since: float, until: float, out_dir: str, bins: int = 24) -> list[str]:
    """One PNG per metric family with one line per system, the window cut into `bins` equal intervals."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    edges = [since + (until - since) * i / bins for i in range(bins + 1)]
    mids = [(a - since) / 3600 for a in edges[:-1]]  # hours since the window start
    systems = sorted({e.system for e in events if since <= e.ts < until})
    written = []
    charts: dict[str, dict[str, list[float | None]]] = {}
    for metric, fn in RATE_METRICS.items():
        series = {s: [fn(events, a, b, system=s).value for a, b in zip(edges, edges[1:])] for s in systems}
        series = {s: v for s, v in series.items() if any(x is not None for x in v)}
        if series:
            charts[metric] = series
    lat = {
        s: [latency_percentiles(events, a, b, s)["p90"] for a, b in zip(edges, edges[1:])] for s in systems
    }
    lat = {s: v for s, v in lat.items() if any(x is not None for x in v)}
    if lat:
        charts["latency_p90_ms"] = lat
    for metric, series in charts.items():
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for s, v in series.items():
            ax.plot(mids, [float("nan") if x is None else x for x in v], marker="o", ms=3, label=s)
        ax.set_title(metric)
        ax.set_xlabel("hours since window start")
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{metric}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def run_report(db: str, since: str = "1d", png_dir: str | None = None, now: float | None = None) -> str:
    """Read the event log at `db`, print-ready table for the last `since`; charts into `png_dir` if given."""
    if not os.path.exists(db):
        raise MetricInputError(f"event log not found: {db}")
    until = time.time() if now is None else now
    span = parse_duration(since)
    with EventLog(db) as log:
        events = log.events(until - 2 * span, until)  # the earlier window feeds retention / churn
    text = report(events, until - span, until)
    if png_dir:
        paths = write_charts(events, until - span, until, png_dir)
        text += "\n\n" + (f"wrote {len(paths)} charts to {png_dir}" if paths else "no data to chart")
    return text
