"""The evaluation harness shared by the transformer and the n-gram baseline.

A predictor is run once at every word boundary of each email (the cursor right after the whitespace that
follows a word), walking the email as a user would type it with one draft id per email, so the incremental
cache is exercised and the latency is that of real keystrokes. Each boundary records the best surviving
suggestion and its confidence *before* any threshold; every figure at a threshold is then computed offline:

- trigger rate: boundaries where a suggestion is shown / all boundaries;
- ExactMatch@N (gensys.metrics): over all boundaries (a withheld suggestion is a miss) and over the
  triggered ones only (precision of what is shown);
- characters saved per email: a simulated user accepts a suggestion exactly when the email continues with
  it and then resumes typing after it (the suggestion at a cursor depends only on the text before it, so
  the recorded suggestions are the ones that user would see);
- latency p50/p90/p99 over all requests (gensys.metrics.latency_percentiles).

`calibrate` picks the threshold that reaches a target trigger rate on dev data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from gensys.apps.compose.data import Email
from gensys.apps.compose.predictor import ComposePredictor
from gensys.metrics import Event, characters_saved, exact_match_at_n, latency_percentiles


@dataclass(frozen=True)
class Point:
    """One scored cursor position of one email."""

    email: int  # index into the email list
    cursor: int
    eligible: bool  # the pipeline produced a suggestion (triggered, not filtered, within budget)
    suggestion: str
    confidence: float
    reason: str
    latency_ms: float


def word_boundaries(body: str) -> list[int]:
    """Cursor positions right after the whitespace that follows a word (never 0, never the end)."""
    return [m.end() for m in re.finditer(r"\S\s+(?=\S)", body)]


def collect(
    predictor: ComposePredictor,
    emails: Sequence[Email],
    *,
    progress: Callable[[int, int], None] | None = None,
    drafts_at_once: int = 1,
) -> list[Point]:
    """Run the pipeline (no threshold) at every word boundary of every email, one draft per email.

    `drafts_at_once` > 1 walks that many emails in lockstep, their next keystrokes sent as one call (as the
    server's batcher does with concurrent users): the same suggestions several times faster, but then a
    point's latency is that of a batched call, not of one user's keystroke.
    """
    if drafts_at_once < 1:
        raise ValueError(f"drafts_at_once must be >= 1, got {drafts_at_once}")
    points: list[Point] = []
    queue = list(range(len(emails)))[::-1]  # emails not started yet (popped from the end)
    active: dict[int, list[int]] = {}  # email -> its word boundaries still to visit
    done = 0
    while queue or active:
        while queue and len(active) < drafts_at_once:
            ei = queue.pop()
            active[ei] = word_boundaries(emails[ei].body)
        order = sorted(active)
        reqs = []
        for ei in order:
            if active[ei]:
                e, cursor = emails[ei], active[ei][0]
                req = {"text": e.body[:cursor], "subject": e.subject, "cursor": cursor}
                reqs.append((ei, cursor, req | {"draft_id": f"eval-{ei}-{e.id}"}))
        outs = predictor.outcomes([r for _, _, r in reqs]) if reqs else []
        for (ei, cursor, _), o in zip(reqs, outs):
            points.append(
                Point(ei, cursor, o.reason == "ok", o.suggestion, o.confidence, o.reason, o.latency_ms)
            )
            active[ei].pop(0)
        for ei in order:
            if not active[ei]:
                del active[ei]
                predictor.end_draft(f"eval-{ei}-{emails[ei].id}")
                done += 1
                if progress is not None:
                    progress(done, len(emails))
    points.sort(key=lambda p: (p.email, p.cursor))
    return points


def shown(points: Sequence[Point], threshold: float) -> list[bool]:
    return [p.eligible and p.confidence >= threshold for p in points]


def calibrate(points: Sequence[Point], target_rate: float) -> float:
    """The lowest confidence threshold whose trigger rate does not exceed `target_rate`.

    If even showing every eligible suggestion stays below the target, the threshold is 0 (show them all).
    """
    if not points:
        raise ValueError("no points to calibrate on")
    conf = sorted((p.confidence for p in points if p.eligible), reverse=True)
    allowed = int(np.floor(target_rate * len(points)))
    if allowed >= len(conf):
        return 0.0
    # Showing the `allowed` most confident ones: the threshold sits just above the next one.
    return float(np.nextafter(conf[allowed], np.inf))


def _continuations(points: Sequence[Point], emails: Sequence[Email]) -> list[str]:
    return [emails[p.email].body[p.cursor :] for p in points]


def chars_saved(
    points: Sequence[Point], emails: Sequence[Email], show: Sequence[bool]
) -> tuple[float, float]:
    """Simulated acceptance: (characters saved per email, characters saved per accepted suggestion)."""
    by_email: dict[int, list[tuple[Point, bool]]] = {}
    for p, s in zip(points, show):
        by_email.setdefault(p.email, []).append((p, s))
    events: list[Event] = []
    for ei, pts in by_email.items():
        body = emails[ei].body
        resume = 0  # the next cursor position the simulated user reaches by typing
        for p, s in pts:
            if p.cursor < resume or not s:
                continue
            rest = body[p.cursor :]
            end = p.cursor + len(p.suggestion)
            if rest.startswith(p.suggestion) and (
                end == len(body) or body[end].isspace() or p.suggestion[-1] in ".!?"
            ):
                events.append(
                    Event(0.0, "compose", "accept", session=str(ei), meta={"chars": len(p.suggestion)})
                )
                resume = end
    rate = characters_saved(events)
    n_emails = len({p.email for p in points})
    return rate.numerator / max(n_emails, 1), rate.value if rate.denominator else 0.0


def metrics_at(
    points: Sequence[Point], emails: Sequence[Email], threshold: float, max_n: int = 5
) -> dict[str, float]:
    """Every figure of the module docstring at one confidence threshold."""
    show = shown(points, threshold)
    conts = _continuations(points, emails)
    sugg = [p.suggestion if s else "" for p, s in zip(points, show)]
    out: dict[str, float] = {"threshold": threshold, "boundaries": float(len(points))}
    out["trigger_rate"] = sum(show) / len(points)
    trig_s = [x for x, s in zip(sugg, show) if s]
    trig_c = [c for c, s in zip(conts, show) if s]
    for n in range(1, max_n + 1):
        out[f"em@{n}"] = exact_match_at_n(sugg, conts, n).score
        out[f"em@{n}_triggered"] = exact_match_at_n(trig_s, trig_c, n).score if trig_s else 0.0
    per_email, per_accept = chars_saved(points, emails, show)
    out["chars_saved_per_email"] = per_email
    out["chars_per_accept"] = per_accept
    return out


def verbatim_in_train(
    points: Sequence[Point],
    emails: Sequence[Email],
    train_bodies: Iterable[str],
    left: int = 3,
    right: int = 5,
) -> list[bool]:
    """Per point: do the `left` words before the cursor and the `right` words after it occur, in that order
    and as whitespace words, somewhere in the training bodies?

    Such boundaries continue with text the training set holds verbatim (automated notices, forwarded
    announcements, signatures): a count-based n-gram retrieves it exactly, a language model only once it has
    memorised it. Splitting the figures on this mask separates recall of training text from generalisation.
    """
    k = left + right
    seen: set[int] = set()
    for body in train_bodies:
        w = body.split()
        seen.update(hash(tuple(w[i : i + k])) for i in range(len(w) - k + 1))
    out = []
    for p in points:
        body = emails[p.email].body
        before, after = body[: p.cursor].split()[-left:], body[p.cursor :].split()[:right]
        out.append(len(before) == left and len(after) == right and hash(tuple(before + after)) in seen)
    return out


def exact_match_by_group(
    points: Sequence[Point], emails: Sequence[Email], threshold: float, mask: Sequence[bool], max_n: int = 5
) -> dict[str, dict[str, float]]:
    """ExactMatch@N at one threshold over the points where `mask` holds ("verbatim") and where it does not
    ("novel"); each group's figures count all of its boundaries (no suggestion = miss)."""
    keys = ["boundaries", "trigger_rate"] + [f"em@{n}" for n in range(1, max_n + 1)]
    out: dict[str, dict[str, float]] = {}
    for name, want in (("verbatim", True), ("novel", False)):
        group = [p for p, m in zip(points, mask) if m == want]
        m = metrics_at(group, emails, threshold, max_n) if group else dict.fromkeys(keys, 0.0)
        out[name] = {k: m[k] for k in keys}
    return out


def sweep(
    points: Sequence[Point], emails: Sequence[Email], rates: Sequence[float], max_n: int = 5
) -> list[dict[str, float]]:
    """metrics_at for thresholds calibrated (on these points) to each trigger rate: a curve."""
    return [metrics_at(points, emails, calibrate(points, r), max_n) for r in rates]


def latency(points: Sequence[Point]) -> dict[str, float | None]:
    """p50/p90/p99 (ms) of every request made while collecting, triggered or not."""
    events = [Event(0.0, "compose", "request", latency_ms=p.latency_ms) for p in points]
    return latency_percentiles(events, system="compose")


# Reasons that are decided after the model ran (everything else is a trigger rule that skipped it).
_MODEL_REASONS = frozenset((
    "ok", "over_budget", "no_candidate", "empty", "inconsistent", "too_long", "too_long_word", "offensive",
    "gendered", "pii_email", "pii_phone", "pii_id_number",
))  # fmt: skip


def triggered_latency(points: Sequence[Point]) -> dict[str, float | None]:
    """Latency percentiles of the requests that reached the model (eligible or filtered after it)."""
    events = [
        Event(0.0, "compose", "request", latency_ms=p.latency_ms)
        for p in points
        if p.reason in _MODEL_REASONS
    ]
    return latency_percentiles(events, system="compose")


def plot_curves(curves: dict[str, list[dict[str, float]]], path: str, ns: Sequence[int] = (1, 3, 5)) -> None:
    """PNG of ExactMatch@N against trigger rate, one line per system and N: over all word boundaries (left)
    and among shown suggestions (right)."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    styles = {"transformer": "-", "ngram": "--"}
    for ax, suffix, label in (
        (axes[0], "", "ExactMatch@N over all word boundaries"),
        (axes[1], "_triggered", "ExactMatch@N among shown suggestions"),
    ):
        for name, curve in curves.items():
            for n in ns:
                xs = [c["trigger_rate"] for c in curve]
                ys = [c[f"em@{n}{suffix}"] for c in curve]
                ax.plot(xs, ys, styles.get(name, ":"), marker="o", markersize=3, label=f"{name} EM@{n}")
        ax.set_xlabel("trigger rate (share of word boundaries with a suggestion)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, ncol=2)
    fig.suptitle("Smart Compose on AESLC test: ExactMatch vs trigger rate")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


__all__ = [
    "Point",
    "calibrate",
    "chars_saved",
    "collect",
    "exact_match_by_group",
    "latency",
    "metrics_at",
    "plot_curves",
    "sweep",
    "triggered_latency",
    "verbatim_in_train",
    "word_boundaries",
]
