"""Post-processing of candidate phrases: consistency with what is typed, shape, length, and safety filters.

`finish_candidate` turns the raw text a generator produced after the prompt (starting with the request's tail:
whitespace + half-typed word) into the suggestion shown after the cursor, or rejects it with a reason:

1. partial-word consistency: the text must start with the tail; the typed part is removed;
2. shape: one line, up to the first sentence end; a candidate cut by the token limit loses its last,
   possibly unfinished, word; spaces collapsed; sentence-initial capital and a capital "I";
3. long filtering: beyond `max_words` words the candidate is truncated there or dropped (`long_policy`);
4. safety: no personal-data patterns (e-mail addresses, phone numbers, card/ID numbers, URLs with user
   info), no offensive terms, and no gendered pronouns or honorifics, which would be a guess about people the
   model knows nothing about (neutral candidates further down the n-best list are used instead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SENTENCE_END = ".!?"

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
_PHONE = re.compile(
    r"(\+?\d{1,2}[\s.-]?)?(\(\d{3}\)|\d{3})[\s.-]?\d{3}[\s.-]?\d{4}\b"  # (713) 853-1234, 713.853.1234
    r"|\b\d{3}[\s.-]\d{4}\b"  # 853-1234
    r"|\bx\d{4,5}\b"  # x31234 (extensions)
)
_ID_NUMBER = re.compile(r"\b\d{3}-\d{2}-\d{4}\b|\b(?:\d[ -]?){13,19}\b")  # SSN, card numbers
_PII_PATTERNS = (("email", _EMAIL), ("phone", _PHONE), ("id_number", _ID_NUMBER))

# Kept short and explicit; extend it rather than trusting the model. Matched as whole lowercase words.
# fmt: off
OFFENSIVE_TERMS = frozenset((
    "asshole", "assholes", "bastard", "bastards", "bitch", "bitches", "bullshit", "crap", "cunt", "damn",
    "dick", "dickhead", "dumbass", "fag", "faggot", "fuck", "fucked", "fucker", "fucking", "goddamn", "idiot",
    "idiots", "jackass", "moron", "morons", "motherfucker", "nigger", "piss", "pissed", "prick", "retard",
    "retarded", "shit", "shitty", "slut", "stupid", "twat", "whore", "wtf",
))
GENDERED_TERMS = frozenset((
    "he", "him", "his", "himself", "she", "her", "hers", "herself", "mr", "mrs", "ms", "miss", "sir", "madam",
    "ma'am", "gentleman", "lady",
))
# fmt: on
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_LONE_I = re.compile(r"(?<![\w.'])i(?=(?:'m|'ll|'ve|'d)?(?![\w.']))")


@dataclass(frozen=True)
class Finished:
    """A suggestion ready to show (`text`), or `text=None` with the reason it was rejected."""

    text: str | None
    reason: str
    words: int = 0


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def pii_reason(context: str, suggestion: str) -> str | None:
    """The reason ("pii_email", ...) if a personal-data pattern overlaps the suggestion, else None.

    The typed context is included, so that completing "john@" into an address is caught too.
    """
    window = context[-40:]
    start = len(window)
    joined = window + suggestion
    for kind, pattern in _PII_PATTERNS:
        for m in pattern.finditer(joined):
            if m.end() > start:
                return f"pii_{kind}"
    return None


def safety_reason(context: str, partial: str, suggestion: str, block_gendered: bool = True) -> str | None:
    """Why a suggestion must not be shown (pii_*, offensive, gendered), or None if it may be."""
    reason = pii_reason(context, suggestion)
    if reason:
        return reason
    words = _words(partial + suggestion)
    if any(w in OFFENSIVE_TERMS for w in words):
        return "offensive"
    if block_gendered and any(w in GENDERED_TERMS for w in words):
        return "gendered"
    return None


def _sentence_start(prefix: str) -> bool:
    """Does the next word start a sentence (after . ! ? or a blank line, or at the very start)?"""
    stripped = prefix.rstrip(" ")
    if not stripped or stripped.endswith("\n"):
        return True
    return stripped[-1] in SENTENCE_END


def finish_candidate(
    generated: str,
    *,
    prefix: str,
    tail: str,
    partial: str,
    ended: str,
    max_words: int,
    long_policy: str = "truncate",
    block_gendered: bool = True,
) -> Finished:
    """Turn generated text (starting with `tail`) into the suggestion after the cursor (see module doc).

    `prefix` is the text before the tail, `partial` the half-typed word, `ended` how generation stopped:
    "eos" | "stop" (a stop string: sentence punctuation + whitespace, or a newline) | "words" (whole words,
    the n-gram's word limit) | "length" (the token limit: the last word may be cut).
    """
    if not generated.startswith(tail):
        return Finished(None, "inconsistent")
    rest = generated[len(tail) :]
    # One line: a newline ends the suggestion, and what precedes it is complete.
    had_newline = "\n" in rest
    rest = rest.split("\n", 1)[0]
    # Did generation end at a real boundary (EOS, a stop string, a newline, whole words) or at the token
    # limit, which may have cut "john." out of "john.doe" or "kno" out of "know"?
    clean_end = ended != "length" or had_newline
    # Up to the first sentence end: punctuation followed by whitespace (or by a clean end of the text).
    m = re.search(r"[.!?]+(?=\s|$)" if clean_end else r"[.!?]+(?=\s)", rest)
    if m:
        rest = rest[: m.end()]
    elif not clean_end:
        # The token limit may have cut a word: keep whole words only.
        if partial and " " not in rest:
            return Finished(None, "too_long_word")  # even the word being typed is unfinished
        rest = rest[: max(rest.rfind(" "), 0)]
    rest = re.sub(r" {2,}", " ", rest).rstrip()
    if (prefix + tail)[-1:].isspace():  # after a space or at a line start, no leading space is shown
        rest = rest.lstrip(" ")
    if not rest.strip():
        return Finished(None, "empty")
    # The word being completed counts as a word; the suggestion's later words follow.
    words = rest.split()
    n_words = len(words)
    if n_words > max_words:
        if long_policy == "drop":
            return Finished(None, "too_long")
        rest = (" " if rest.startswith(" ") else "") + " ".join(words[:max_words])
        n_words = max_words
    # Casing: a sentence-initial word gets a capital; a standalone "i" (i'm, i'll, ...) is always "I".
    if not partial and _sentence_start(prefix + tail) and rest.lstrip()[:1].islower():
        i = len(rest) - len(rest.lstrip())
        rest = rest[:i] + rest[i].upper() + rest[i + 1 :]
    rest = _LONE_I.sub("I", partial + rest)[len(partial) :]
    why = safety_reason(prefix + tail, partial, rest, block_gendered)
    if why:
        return Finished(None, why)
    return Finished(rest, "ok", n_words)


__all__ = [
    "GENDERED_TERMS",
    "OFFENSIVE_TERMS",
    "Finished",
    "finish_candidate",
    "pii_reason",
    "safety_reason",
]
