"""Prompt enhancer: normalise what users type, add the operator's system prompt, flag injection markers.

Three small steps, each a function:

- `normalize_text`: Unicode NFC, line endings to "\\n", control characters removed (tab and newline kept),
  invisible format characters that can hide or reorder text (zero-width space, BOM, word joiner, bidi
  embeddings/overrides/isolates) removed, runs of spaces collapsed, at most two blank lines in a row.
  Zero-width (non-)joiners stay: emoji sequences and several scripts need them.
- `SpellFixer` (optional, off by default): replaces an unknown lowercase word by its single most frequent
  known word at edit distance 1 (Norvig's method) from a word-count vocabulary.
- `injection_markers`: finds chat-template markers in user text (ours like "<|assistant|>", and other
  families' "<|im_start|>", "[INST]", "### Instruction:", "\\n\\nHuman:"). They are reported, not rewritten:
  the tokenizer's `encode` (allow_special=False) turns them into ordinary text tokens, so they can never
  become role tokens (proven end to end in tests/apps/chat/test_chat_pipeline_enhancer.py).

`PromptEnhancer.enhance(messages)` applies them and puts the system prompt first: the operator's
`system_prompt`, then (if allowed) the client's own system message after it.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gensys.data.tokenizer import ROLE_TOKENS

Message = dict[str, Any]

# Cc except \t \n; \r is handled first (CRLF -> LF)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# zero-width space, LRM/RLM, bidi embeddings/overrides (U+202A-E), word joiner..invisible operators, isolates
# (U+2066-9), BOM. Not U+200C/U+200D (ZWNJ/ZWJ), which scripts and emoji need.
_INVISIBLE = re.compile("[\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANKS = re.compile(r"\n{3,}")

# Markers of chat templates (ours and other model families'), matched case-insensitively.
INJECTION_PATTERNS: tuple[str, ...] = (
    *(re.escape(t) for t in ROLE_TOKENS.values()),
    r"<\|im_start\|>",
    r"<\|im_end\|>",
    r"<\|start_header_id\|>",
    r"<\|eot_id\|>",
    r"<\|endoftext\|>",
    r"\[/?INST\]",
    r"<</?SYS>>",
    r"###\s*(instruction|response|system)\s*:",
    r"(^|\n)\s*(human|assistant|system)\s*:",
)
_INJECTION = re.compile("|".join(f"(?:{p})" for p in INJECTION_PATTERNS), re.IGNORECASE)


def normalize_text(text: str) -> str:
    """NFC, LF line ends, no control or invisible formatting characters, collapsed spaces, trimmed."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _INVISIBLE.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def injection_markers(text: str) -> list[str]:
    """The chat-template markers found in `text` (as written), in order."""
    return [m.group(0).strip() for m in _INJECTION.finditer(text)]


_WORDS = re.compile(r"[a-z]+")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


class SpellFixer:
    """Edit-distance-1 corrections of unknown lowercase words, from a word-count vocabulary."""

    def __init__(self, counts: dict[str, int], min_count: int = 3, min_len: int = 4) -> None:
        self.counts = {w: c for w, c in counts.items() if c >= min_count}
        self.min_len = min_len

    @classmethod
    def from_texts(cls, texts: Iterable[str], **kw: Any) -> SpellFixer:
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(_WORDS.findall(t.lower()))
        return cls(dict(counts), **kw)

    @staticmethod
    def _edits1(word: str) -> set[str]:
        splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
        deletes = [a + b[1:] for a, b in splits if b]
        swaps = [a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1]
        replaces = [a + c + b[1:] for a, b in splits if b for c in _LETTERS]
        inserts = [a + c + b for a, b in splits for c in _LETTERS]
        return set(deletes + swaps + replaces + inserts)

    def correct_word(self, word: str) -> str:
        """`word` itself if known, short, or not all lowercase letters; else its best known edit."""
        if len(word) < self.min_len or not word.isascii() or not word.isalpha() or not word.islower():
            return word
        if word in self.counts:
            return word
        candidates = [w for w in self._edits1(word) if w in self.counts]
        return max(candidates, key=lambda w: (self.counts[w], w)) if candidates else word

    def fix(self, text: str) -> str:
        """Text with each lowercase word corrected; everything else (case, punctuation, spacing) untouched."""
        return re.sub(r"\b[a-z]+\b", lambda m: self.correct_word(m.group(0)), text)


@dataclass
class EnhancerConfig:
    """How prompts are prepared before the model sees them."""

    system_prompt: str = "You are a helpful, honest and harmless assistant."
    allow_client_system: bool = True  # keep a client's system message (after the operator's)
    normalize: bool = True
    spelling: bool = False
    spelling_vocab: list[str] = field(default_factory=lambda: ["chat/sft/sft_train.jsonl"])  # under data/


@dataclass
class Enhanced:
    """The result: messages for the model, plus what was changed or found."""

    messages: list[Message]
    injection_markers: list[str]
    changed: bool  # whether normalisation or spelling changed any text


class PromptEnhancer:
    """Normalise (and optionally spell-fix) user text, put the system prompt first, report markers."""

    def __init__(self, cfg: EnhancerConfig, spell: SpellFixer | None = None) -> None:
        self.cfg = cfg
        self.spell = spell if cfg.spelling else None

    def enhance(self, messages: Sequence[Message]) -> Enhanced:
        out: list[Message] = []
        markers: list[str] = []
        changed = False
        client_system = []
        for m in messages:
            text = m["content"]
            new = normalize_text(text) if self.cfg.normalize else text
            if self.spell is not None and m["role"] == "user":
                new = self.spell.fix(new)
            changed |= new != text
            if m["role"] in ("user", "system"):
                markers += injection_markers(new)
            msg = {**m, "content": new}
            if m["role"] == "system":
                client_system.append(new)
            else:
                out.append(msg)
        system_parts = [self.cfg.system_prompt] if self.cfg.system_prompt else []
        if self.cfg.allow_client_system:
            system_parts += [s for s in client_system if s]
        if system_parts:
            out.insert(0, {"role": "system", "content": "\n\n".join(system_parts)})
        return Enhanced(out, markers, changed)


__all__ = [
    "EnhancerConfig",
    "Enhanced",
    "INJECTION_PATTERNS",
    "PromptEnhancer",
    "SpellFixer",
    "injection_markers",
    "normalize_text",
]
