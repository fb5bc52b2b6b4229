"""Triggering rules and request validation on hand-made drafts."""

from __future__ import annotations

import pytest

from gensys.apps.compose.config import SuggestConfig
from gensys.apps.compose.triggering import ComposeInputError, Request, decide, parse_request

CFG = SuggestConfig()


def _decide(text: str, cursor: int | None = None, **cfg) -> tuple[bool, str, str, str]:
    req = Request(text, len(text) if cursor is None else cursor)
    d = decide(req, SuggestConfig(**cfg) if cfg else CFG)
    return d.trigger, d.reason, d.prefix, d.tail


def test_word_boundary_splits_prompt_before_the_space():
    # The prompt ends at the word end (as in training); the space is what the suggestion must start with.
    assert _decide("Please let me ") == (True, "ok", "Please let me", " ")


def test_partial_word_becomes_the_tail():
    trig, reason, prefix, tail = _decide("Please let me kn")
    assert (trig, reason, prefix, tail) == (True, "ok", "Please let me", " kn")


def test_partial_words_can_be_switched_off():
    assert _decide("Please let me kn", allow_partial_words=False)[:2] == (False, "partial_word")
    assert _decide("Please let me ", allow_partial_words=False)[0]


def test_minimum_prefix():
    assert _decide("Hel")[:2] == (False, "too_short")  # only a half-typed first word
    assert _decide("Hello ")[0]
    assert _decide("Hello ", min_prefix_words=2)[:2] == (False, "too_short")
    assert _decide("   \n ")[:2] == (False, "too_short")


def test_cursor_in_the_middle_of_a_line_does_not_trigger():
    text = "Please let me know soon"
    assert _decide(text, cursor=len("Please let me "))[:2] == (False, "cursor_mid_line")
    # ... but the end of a line with more lines below it does.
    text2 = "Please let me \nThanks, Bob"
    assert _decide(text2, cursor=len("Please let me "))[:2] == (True, "ok")


def test_numbers_and_addresses_being_typed_do_not_trigger():
    assert _decide("Call me at 713")[:2] == (False, "typing_number_or_address")
    assert _decide("Write to john@")[:2] == (False, "typing_number_or_address")
    assert _decide("The file is at http://")[:2] == (False, "typing_number_or_address")
    assert _decide("Call me at 713 ")[0]  # the number is finished


def test_long_partial_word_does_not_trigger():
    assert _decide("See " + "a" * 30)[:2] == (False, "partial_word_too_long")


def test_quoted_forwarded_and_signature_text_do_not_trigger():
    assert _decide("Sounds good.\n> I think we should ")[:2] == (False, "quoted_text")
    fwd = "FYI\n-----Original Message-----\nFrom: Bob\nSent: Monday\nPlease send the "
    assert _decide(fwd)[:2] == (False, "forwarded_text")
    fwd2 = "FYI\n---------------------- Forwarded by Jeff Dasovich/SF/ECT\nThe meeting is "
    assert _decide(fwd2)[:2] == (False, "forwarded_text")
    sig = "Thanks!\n-- \nJohn Smith\nDirector of "
    assert _decide(sig)[:2] == (False, "signature")
    # A line that merely contains dashes is not a signature delimiter.
    assert _decide("The price is up -- we should ")[0]


def test_parse_request_defaults_and_fields():
    r = parse_request({"text": "Hi there ", "subject": "Lunch"}, CFG)
    assert (r.text, r.cursor, r.subject, r.previous, r.draft_id) == ("Hi there ", 9, "Lunch", "", None)
    r = parse_request({"text": b"Hi there ", "cursor": 3, "draft_id": "d1"}, CFG)
    assert (r.text, r.cursor, r.draft_id) == ("Hi there ", 3, "d1")


@pytest.mark.parametrize(
    "req, status, words",
    [
        ({"text": ""}, 400, "empty"),
        ({"subject": "x"}, 400, "required"),
        ({"text": "a" * (1 << 20)}, 413, "limit"),
        ({"text": b"caf\xe9 au lait"}, 400, "UTF-8"),
        ({"text": "bad \udc80 surrogate"}, 400, "UTF-8"),
        ({"text": "hi", "cursor": 5}, 400, "outside"),
        ({"text": "hi", "cursor": "2"}, 400, "integer"),
        ({"text": 42}, 400, "string"),
        ({"text": "hi", "colour": "red"}, 400, "unknown"),
        ({"text": "hi", "draft_id": ""}, 400, "draft_id"),
    ],
)
def test_bad_requests_give_clear_errors(req, status, words):
    with pytest.raises(ComposeInputError) as info:
        parse_request(req, CFG)
    assert info.value.http_status == status
    assert words in str(info.value)


def test_a_line_break_goes_to_the_prompt():
    # A tail holding "\n" would end every candidate at the newline stop string before it started.
    assert _decide("Could you do me a favor?\n") == (True, "ok", "Could you do me a favor?\n", "")
    assert _decide("Could you do me a favor?\n\nWou") == (True, "ok", "Could you do me a favor?\n\n", "Wou")
    assert _decide("Thanks a lot.\n  Be") == (True, "ok", "Thanks a lot.\n", "  Be")
