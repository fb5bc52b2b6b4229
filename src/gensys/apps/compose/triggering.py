"""The triggering service: validate a request and decide whether the model is worth calling at all.

Most keystrokes should not cost a model call. A request triggers only when the cursor is at the end of a line,
at a word boundary or inside a plain word, after enough typed words, and outside quoted replies, forwarded
messages and signatures. The text before the cursor is split into a stable `prefix` (what the prompt holds)
and a `tail` (trailing whitespace + the half-typed word) that the suggestion must start with, so the prompt
always ends at a word end or a line break, as in training, whatever the cursor position.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gensys.apps.compose.config import SuggestConfig
from gensys.errors import GensysError


class ComposeInputError(GensysError, ValueError):
    """A malformed suggest request; `http_status` is what an HTTP layer should answer (400 or 413)."""

    def __init__(self, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass(frozen=True)
class Request:
    """A validated request: the draft before the cursor and its context."""

    text: str  # the whole draft
    cursor: int  # characters before the cursor
    subject: str = ""
    previous: str = ""
    draft_id: str | None = None

    @property
    def before(self) -> str:
        return self.text[: self.cursor]


@dataclass(frozen=True)
class Decision:
    """Whether to call the model, why (a short reason code), and how the prompt splits at the cursor."""

    trigger: bool
    reason: str  # "ok" or why not
    prefix: str = ""  # text before the cursor without the tail: the prompt ends here
    tail: str = ""  # trailing whitespace + partial word: the suggestion's generated text must start with it
    partial: str = ""  # the half-typed word (no whitespace)


def _as_text(value: Any, name: str, limit: int) -> str:
    """A str field, decoding bytes as strict UTF-8; anything not valid UTF-8 is a 400, too long a 413."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ComposeInputError(f"'{name}' is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    if not isinstance(value, str):
        raise ComposeInputError(f"'{name}' must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise ComposeInputError(f"'{name}' has {len(value)} characters; the limit is {limit}", 413)
    try:
        value.encode("utf-8")  # lone surrogates (e.g. from "\udc80" in JSON) are not text
    except UnicodeEncodeError as e:
        raise ComposeInputError(
            f"'{name}' is not valid UTF-8 text (position {e.start}: {e.reason})"
        ) from None
    if "\x00" in value:
        raise ComposeInputError(f"'{name}' contains a NUL character")
    return value


def parse_request(obj: Mapping[str, Any], cfg: SuggestConfig) -> Request:
    """Check a request {"text", "subject"?, "previous"?, "cursor"?, "draft_id"?}; bad ones raise an error."""
    if not isinstance(obj, Mapping):
        raise ComposeInputError(f"a request must be an object, got {type(obj).__name__}")
    unknown = set(obj) - {"text", "subject", "previous", "cursor", "draft_id"}
    if unknown:
        raise ComposeInputError(f"unknown request field(s): {', '.join(sorted(unknown))}")
    if "text" not in obj:
        raise ComposeInputError("'text' is required")
    text = _as_text(obj["text"], "text", cfg.max_text_chars)
    if not text:
        raise ComposeInputError("'text' is empty: there is nothing to complete")
    subject = _as_text(obj.get("subject"), "subject", cfg.max_subject_chars)
    previous = _as_text(obj.get("previous"), "previous", cfg.max_previous_chars)
    cursor = obj.get("cursor")
    if cursor is None:
        cursor = len(text)
    if isinstance(cursor, bool) or not isinstance(cursor, int):
        raise ComposeInputError(f"'cursor' must be an integer, got {cursor!r}")
    if not 0 <= cursor <= len(text):
        raise ComposeInputError(f"'cursor' {cursor} is outside the text (0..{len(text)})")
    draft_id = obj.get("draft_id")
    if draft_id is not None and (not isinstance(draft_id, str) or not 0 < len(draft_id) <= 200):
        raise ComposeInputError("'draft_id' must be a non-empty string of at most 200 characters")
    return Request(text, cursor, subject, previous, draft_id)


# A partial word: letters, digits, apostrophes, hyphens (what a suggestion may complete).
_TAIL = re.compile(r"(\s*)([\w'\u2019-]*)\Z")
_FORWARD_MARKERS = re.compile(
    r"^(-{2,}\s*(original message|forwarded by)|begin forwarded message:|[- ]*forwarded message[- ]*$)",
    re.IGNORECASE | re.MULTILINE,
)
_HEADER_BLOCK = re.compile(r"^from:.*\n(.*\n)?(sent|date|to):", re.IGNORECASE | re.MULTILINE)
_SIGNATURE = re.compile(r"^(-- ?|__+)$", re.MULTILINE)  # "-- " is the standard signature delimiter
_ADDRESS_LIKE = re.compile(r"[@/\\:#$%&=_]|\d")


def decide(req: Request, cfg: SuggestConfig) -> Decision:
    """Apply the triggering rules to a validated request (see the module docstring)."""
    after = req.text[req.cursor :]
    if after.split("\n", 1)[0].strip():
        return Decision(False, "cursor_mid_line")  # suggestions are shown at the end of a line only
    before = req.before
    m = _TAIL.search(before)
    assert m is not None  # the pattern matches the empty string
    space, partial = m.group(1), m.group(2)
    prefix = before[: m.start()]
    if "\n" in space:
        # A line break belongs to the prompt: the next line starts a new pre-token in training too ("?\nI"
        # is "?", "\n", "I"), while a tail of "\n" would make every candidate end at once at the newline stop.
        cut = space.rfind("\n") + 1
        prefix, space = prefix + space[:cut], space[cut:]
    if len(prefix.split()) < max(1, cfg.min_prefix_words):
        # Too little typed to condition on (a half-typed first word does not count).
        return Decision(False, "too_short")
    if partial and not cfg.allow_partial_words:
        return Decision(False, "partial_word")
    if len(partial) > cfg.max_partial_chars:
        return Decision(False, "partial_word_too_long")
    if partial and _ADDRESS_LIKE.search(partial):
        return Decision(False, "typing_number_or_address")
    if not space and not partial and _ADDRESS_LIKE.search(prefix.split()[-1]):
        # e.g. "john@" or "call 713-": the cursor sits inside an address or a number
        return Decision(False, "typing_number_or_address")
    current_line = before.rsplit("\n", 1)[-1]
    if current_line.lstrip().startswith(">"):
        return Decision(False, "quoted_text")
    if _FORWARD_MARKERS.search(before) or _HEADER_BLOCK.search(before):
        return Decision(False, "forwarded_text")
    if _SIGNATURE.search(before):
        return Decision(False, "signature")
    return Decision(True, "ok", prefix, space + partial, partial)


__all__ = ["ComposeInputError", "Decision", "Request", "decide", "parse_request"]
