"""The evaluation harness on hand-made points: boundaries, calibration, ExactMatch, simulated acceptance."""

from __future__ import annotations

import pytest

from gensys.apps.compose import evaluate as ev
from gensys.apps.compose.data import Email

BODY = "Please let me know if you have questions. Thanks, Bob"
EMAILS = [Email("u_f_1", "Hi", BODY)]


def test_word_boundaries():
    assert ev.word_boundaries("a bc  d\ne") == [2, 6, 8]
    assert ev.word_boundaries("one") == []


def _pt(cursor, sugg, conf, ok=True):
    return ev.Point(0, cursor, ok, sugg, conf, "ok" if ok else "too_short", 10.0)


def _points():
    b = ev.word_boundaries(BODY)  # cursors after "Please ", "let ", "me ", "know ", ...
    return [
        _pt(b[0], "let me know", 0.9),  # right (3 words)
        _pt(b[1], "you know", 0.4),  # wrong
        _pt(b[2], "know if you have questions.", 0.8),  # right, 5 words
        _pt(b[3], "if you", 0.95),  # right (2 words)
        _pt(b[6], "", 0.0, ok=False),  # not eligible
        _pt(b[7], "Thanks, Bob", 0.3),  # right but below the threshold used below
    ]


def test_calibrate_hits_the_target_rate():
    pts = _points()
    thr = ev.calibrate(pts, 0.5)  # 3 of 6 may be shown: the three most confident
    assert sum(ev.shown(pts, thr)) == 3
    assert ev.calibrate(pts, 1.0) == 0.0  # fewer eligible than allowed: show them all
    assert sum(ev.shown(pts, ev.calibrate(pts, 0.0))) == 0


def test_metrics_at_threshold():
    pts = _points()
    m = ev.metrics_at(pts, EMAILS, 0.5, max_n=5)
    # Shown at 0.5: b0 (right), b2 (right), b3 (right: "if you" follows "know ") -> 3 of 6 boundaries.
    assert m["trigger_rate"] == pytest.approx(3 / 6)
    assert m["em@1"] == pytest.approx(3 / 6)
    assert m["em@3"] == pytest.approx(2 / 6)  # "if you" has only 2 words
    assert m["em@5"] == pytest.approx(1 / 6)
    assert m["em@3_triggered"] == pytest.approx(2 / 3)
    # Acceptance: "let me know" at b0, which jumps the user past b1 and b2; "if you" at b3 is accepted too.
    assert m["chars_saved_per_email"] == pytest.approx(len("let me know") + len("if you"))


def test_acceptance_skips_positions_inside_an_accepted_suggestion():
    b = ev.word_boundaries(BODY)
    pts = [_pt(b[2], "know if you have questions.", 0.8), _pt(b[3], "if you", 0.95)]
    per_email, per_accept = ev.chars_saved(pts, EMAILS, [True, True])
    assert per_email == len("know if you have questions.")
    assert per_accept == per_email
    # A suggestion that is not exactly what follows is never accepted.
    assert ev.chars_saved([_pt(b[2], "know if you had", 0.8)], EMAILS, [True])[0] == 0


def test_latency_percentiles():
    pts = [ev.Point(0, i, True, "x", 0.5, "ok", float(i)) for i in range(1, 101)]
    lat = ev.latency(pts)
    assert lat["p50"] == pytest.approx(50.5) and lat["p99"] == pytest.approx(99.01)


def test_verbatim_mask_and_groups():
    b = ev.word_boundaries(BODY)  # b[3] is after "Please let me know "
    pts = [_pt(b[3], "if you", 0.9), _pt(b[0], "you know", 0.8), _pt(b[1], "", 0.0, ok=False)]
    train = ["We said: please let me know if you have questions. Thanks, Bob", "let me go"]
    # After b[3]: "let me know" + "if you have questions. Thanks," occurs in the first training text (the
    # case of "Please" does not matter: it is not among the 3 words); before b[0] there is only 1 word.
    mask = ev.verbatim_in_train(pts, EMAILS, train)
    assert mask == [True, False, False]
    groups = ev.exact_match_by_group(pts, EMAILS, 0.5, mask, max_n=3)
    assert groups["verbatim"]["boundaries"] == 1 and groups["verbatim"]["em@2"] == 1.0
    assert groups["novel"]["boundaries"] == 2 and groups["novel"]["em@1"] == 0.0
    assert groups["novel"]["trigger_rate"] == pytest.approx(0.5)
    assert ev.verbatim_in_train(pts, EMAILS, ["let me know if you have any questions. Thanks,"]) == [
        False, False, False,
    ]  # fmt: skip


def test_walking_drafts_in_lockstep_gives_the_sequential_points(emails, tiny_tok, tiny_model):
    from gensys.apps.compose.config import SuggestConfig
    from gensys.apps.compose.generator import TransformerBackend
    from gensys.apps.compose.predictor import ComposePredictor

    def predictor():
        be = TransformerBackend(
            tiny_model, tiny_tok, num_beams=2, max_new_tokens=4, max_context_tokens=200,
            subject_max_tokens=8, previous_max_tokens=8,
        )  # fmt: skip
        return ComposePredictor(be, SuggestConfig(num_beams=2, max_new_tokens=4, latency_budget_ms=0))

    few = [Email(e.id, e.subject, " ".join(e.body.split()[:12])) for e in emails[:4]]
    seq = ev.collect(predictor(), few)
    done = []
    lock = ev.collect(predictor(), few, drafts_at_once=3, progress=lambda d, n: done.append((d, n)))
    assert [(p.email, p.cursor) for p in lock] == [(p.email, p.cursor) for p in seq]
    assert sum(len(ev.word_boundaries(e.body)) for e in few) == len(seq) > 20
    for a, b in zip(seq, lock):
        assert (a.suggestion, a.reason, a.eligible) == (b.suggestion, b.reason, b.eligible)
        assert a.confidence == pytest.approx(b.confidence, abs=2e-4)
    assert done[-1] == (4, 4) and len(done) == 4
    with pytest.raises(ValueError, match="drafts_at_once"):
        ev.collect(predictor(), few, drafts_at_once=0)
