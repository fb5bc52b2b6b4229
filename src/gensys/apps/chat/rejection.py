"""Rejection response generator: a proper reply when a request is unsafe or no candidate reply is safe.

The reply explains, per flagged category, why the request can't be fulfilled and what the assistant can do
instead. It is built from fixed sentences only: it never quotes or paraphrases the user's text (which may be
the harmful content itself), and it is the same for the same categories, so it can be tested and audited.
Self-harm gets a supportive reply that points to help rather than a bare refusal.

Through the OpenAI-compatible API the refusal is an ordinary assistant message with
`finish_reason: "content_filter"`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

# Per category: (what it is about, what the assistant offers instead).
REASONS: dict[str, tuple[str, str]] = {
    "sexual": (
        "sexually explicit content",
        "I can help with questions about relationships, health or consent in a non-explicit way.",
    ),
    "sexual/minors": (
        "sexual content involving minors, which I never produce",
        "If a child may be at risk, please contact local child-protection services or the police.",
    ),
    "hate": (
        "content that demeans people for who they are (for example their race, religion, gender or "
        "sexual orientation)",
        "I'm glad to discuss the history or effects of prejudice, or help you write about it respectfully.",
    ),
    "hate/threatening": (
        "threats or calls for violence against a group of people",
        "If someone is in danger, please contact local emergency services.",
    ),
    "harassment": (
        "harassing, bullying or intimidating someone",
        "I can help you handle a conflict, or write a firm but respectful message instead.",
    ),
    "violence": (
        "helping to hurt people or promoting violence",
        "I can share information on safety, conflict de-escalation, or the topic in a general, factual way.",
    ),
    "violence/graphic": (
        "graphic descriptions of injury or gore",
        "I can describe the topic in a factual, non-graphic way.",
    ),
    "self-harm": (
        "self-harm",
        "If you are thinking about hurting yourself, you deserve support right now: please reach out to "
        "someone you trust, or a local crisis line or emergency number. You don't have to go through this "
        "alone, and I'm happy to keep talking about what you're going through.",
    ),
    "offensive": (
        "offensive or insulting language",
        "I'm happy to help if you rephrase the request.",
    ),
    "harmful_request": (
        "helping with something that could hurt people or break the law",
        "I'm glad to help with a safe version of the question, or with general, factual information.",
    ),
}
GENERIC = (
    "content that goes against the assistant's safety policy",
    "I'm happy to help with something else.",
)

# Order in which categories are explained (the most serious first); unknown ones go last.
PRIORITY: tuple[str, ...] = (
    "sexual/minors",
    "self-harm",
    "hate/threatening",
    "violence",
    "violence/graphic",
    "hate",
    "harassment",
    "sexual",
    "harmful_request",
    "offensive",
)


def _ordered(categories: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(categories))
    return sorted(seen, key=lambda c: PRIORITY.index(c) if c in PRIORITY else len(PRIORITY))


def rejection_text(categories: Sequence[str], stage: Literal["input", "output"] = "input") -> str:
    """The refusal for the flagged `categories` of a request (`stage="input"`) or of every reply the
    assistant drafted (`stage="output"`)."""
    cats = _ordered(categories)
    reasons = [REASONS.get(c, GENERIC) for c in cats] or [GENERIC]
    if cats and cats[0] == "self-harm" and len(cats) == 1:
        lead = "I'm really sorry you're dealing with this. I can't help with anything that could cause harm."
        return f"{lead} {reasons[0][1]}"
    about = _join([r[0] for r in reasons])
    if stage == "input":
        lead = f"I can't help with this request because it involves {about}."
    else:
        lead = (
            f"I drafted a reply, but it would have included {about}, so I won't share it. "
            "Could you rephrase your request?"
        )
    offers = list(dict.fromkeys(r[1] for r in reasons))
    return " ".join([lead, *offers])


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return items[0] if items else ""
    return ", ".join(items[:-1]) + " and " + items[-1]


__all__ = ["GENERIC", "PRIORITY", "REASONS", "rejection_text"]
