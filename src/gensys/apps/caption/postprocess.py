"""Post-processing of generated captions: fairness (don't guess gender / age / ethnicity), offensive terms,
casing and punctuation.

Fairness rule (documented in docs/caption.md, measured by `gensys caption eval`):

A caption word that asserts a person's gender, age or ethnicity is kept only if the model was *confident*
about it, else it is replaced by a neutral word (or dropped, for adjectives). Confidence is read from the
decoder's next-token distribution p(. | image, prefix) at the position where the word was emitted, as the
share of probability mass of the claimed value among the alternatives the model weighed there:

- person nouns (man, woman, boy, girl, men, ...; neutral: person, people, child, kid, ...):
  gender confidence = p(nouns of the same gender) / p(all person nouns); age confidence likewise with the
  age groups child / adult. If either is below `threshold` the noun becomes "child"/"children" (when the
  child age is confident) or "person"/"people".
- age adjectives before a person noun (young, little, old, elderly, ...):
  p(adjectives of the same age group) / (p(all age adjectives) + p(person nouns)), i.e. against saying
  another age or none; below `threshold` the adjective is dropped.
- ethnicity adjectives before a person noun (asian, african, ... and "black"/"white" used of a
  person): p(this adjective) / (p(all ethnicity adjectives) + p(person nouns)); below `threshold`: dropped.
- gendered pronouns (he, she, his, her, him) are kept only after a kept noun of the same gender in the same
  caption, else they become they / their / them.

Only words that are a single token of the tokenizer (with their leading space) take part in the sums, since
multi-token words have no single next-token probability; for the trained BPE vocabularies all the words above
are single tokens. Offensive words are banned during beam search (`bad_words_ids`) and any that remain are
dropped from the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gensys.data.tokenizer import Tokenizer

# word -> (gender, age, plural); gender m / f / n(eutral), age child / adult / any
PERSON_NOUNS: dict[str, tuple[str, str, bool]] = {
    "man": ("m", "adult", False), "men": ("m", "adult", True),
    "woman": ("f", "adult", False), "women": ("f", "adult", True),
    "boy": ("m", "child", False), "boys": ("m", "child", True),
    "girl": ("f", "child", False), "girls": ("f", "child", True),
    "guy": ("m", "adult", False), "guys": ("m", "adult", True),
    "lady": ("f", "adult", False), "ladies": ("f", "adult", True),
    "gentleman": ("m", "adult", False), "gentlemen": ("m", "adult", True),
    "male": ("m", "any", False), "males": ("m", "any", True),
    "female": ("f", "any", False), "females": ("f", "any", True),
    "person": ("n", "any", False), "people": ("n", "any", True),
    "child": ("n", "child", False), "children": ("n", "child", True),
    "kid": ("n", "child", False), "kids": ("n", "child", True),
    "toddler": ("n", "child", False), "toddlers": ("n", "child", True),
    "baby": ("n", "child", False), "babies": ("n", "child", True),
    "adult": ("n", "adult", False), "adults": ("n", "adult", True),
    "someone": ("n", "any", False), "skier": ("n", "any", False), "biker": ("n", "any", False),
}  # fmt: skip
AGE_ADJECTIVES: dict[str, str] = {
    "young": "young", "little": "young", "younger": "young", "teenage": "young", "teen": "young",
    "old": "old", "older": "old", "elderly": "old", "aged": "old",
}  # fmt: skip
ETHNICITY_ADJECTIVES = ("asian", "african", "caucasian", "hispanic", "latino", "latina", "indian", "arab",
                        "black", "white", "oriental", "ethnic", "dark-skinned", "light-skinned")  # fmt: skip
PRONOUNS: dict[str, tuple[str, str]] = {  # word -> (gender, neutral replacement)
    "he": ("m", "they"), "she": ("f", "they"), "him": ("m", "them"), "his": ("m", "their"),
    "her": ("f", "their"), "hers": ("f", "theirs"), "himself": ("m", "themselves"),
    "herself": ("f", "themselves"),
}  # fmt: skip
# "they is" -> "they are" after a pronoun becomes "they".
_AGREEMENT = {"is": "are", "was": "were", "has": "have", "does": "do"}

# General profanity and insults; deployments add their own terms with `post.extra_blocklist`.
BLOCKLIST = ("fuck", "fucking", "fucked", "shit", "shitty", "bitch", "bitches", "bastard", "asshole",
             "dick", "cunt", "slut", "whore", "retard", "retarded", "idiot", "moron", "stupid", "ugly",
             "freak", "loser", "dumb", "crap", "piss", "pissed", "damn", "midget", "cripple", "tranny",
             "hooker", "pervert", "nazi")  # fmt: skip

_AN_EXCEPTIONS = {"one", "uniform", "uniforms", "unicycle", "university", "unicorn", "user", "european",
                  "ukulele", "utility", "usual", "unique", "union", "used", "useful", "urinal"}  # fmt: skip
_AN_FORCED = {"hour", "honest", "heir", "honor", "honour"}


@dataclass
class Change:
    """One edit made by the fairness rule (for logs and the eval report)."""

    kind: str  # "gender" | "age" | "ethnicity" | "pronoun"
    word: str
    replacement: str  # "" = dropped
    confidence: float | None  # None for pronouns (they follow the nouns)


@dataclass
class PostResult:
    text: str
    changes: list[Change] = field(default_factory=list)
    removed_offensive: list[str] = field(default_factory=list)


def _word_ids(tok: Tokenizer, words: Iterable[str]) -> dict[str, list[int]]:
    """Token ids that spell each word as one token (with a leading space, and at the caption start)."""
    out: dict[str, list[int]] = {}
    for w in words:
        ids = []
        for form in (" " + w, w):
            enc = tok.encode(form)
            if len(enc) == 1:
                ids.append(enc[0])
        if ids:
            out[w] = ids
    return out


class FairnessLexicon:
    """The tokenizer ids of the attribute words, grouped as the confidence sums need them."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.noun_ids = _word_ids(tok, PERSON_NOUNS)
        self.age_ids = _word_ids(tok, AGE_ADJECTIVES)
        self.eth_ids = _word_ids(tok, ETHNICITY_ADJECTIVES)

        def ids(words: Iterable[str], table: dict[str, list[int]]) -> Tensor:
            return torch.tensor(sorted({i for w in words for i in table.get(w, [])}), dtype=torch.long)

        self.all_nouns = ids(PERSON_NOUNS, self.noun_ids)
        self.by_gender = {
            g: ids([w for w, v in PERSON_NOUNS.items() if v[0] == g], self.noun_ids) for g in "mfn"
        }
        self.by_age = {
            a: ids([w for w, v in PERSON_NOUNS.items() if v[1] == a], self.noun_ids)
            for a in ("child", "adult", "any")
        }
        self.all_age_adj = ids(AGE_ADJECTIVES, self.age_ids)
        self.by_age_adj = {
            g: ids([w for w, v in AGE_ADJECTIVES.items() if v == g], self.age_ids) for g in ("young", "old")
        }
        self.all_eth = ids(ETHNICITY_ADJECTIVES, self.eth_ids)

    @staticmethod
    def _mass(p: Tensor, ids: Tensor) -> float:
        return float(p[ids].sum()) if ids.numel() else 0.0

    def noun_confidence(self, p: Tensor, word: str) -> tuple[float, float]:
        """(gender confidence, age confidence) of person noun `word` under next-token probabilities p (V,)."""
        gender, age, _ = PERSON_NOUNS[word]
        total = self._mass(p, self.all_nouns)
        if total <= 0:
            return 0.0, 0.0
        g = self._mass(p, self.by_gender[gender]) / total if gender != "n" else 1.0
        a = self._mass(p, self.by_age[age]) / total if age != "any" else 1.0
        return g, a

    def age_adj_confidence(self, p: Tensor, word: str) -> float:
        group = AGE_ADJECTIVES[word]
        den = self._mass(p, self.all_age_adj) + self._mass(p, self.all_nouns)
        return self._mass(p, self.by_age_adj[group]) / den if den > 0 else 0.0

    def ethnicity_confidence(self, p: Tensor, word: str) -> float:
        mine = torch.tensor(self.eth_ids.get(word, []), dtype=torch.long)
        den = self._mass(p, self.all_eth) + self._mass(p, self.all_nouns)
        return self._mass(p, mine) / den if den > 0 else 0.0


def token_words(tok: Tokenizer, tokens: Sequence[int]) -> list[tuple[str, list[int]]]:
    """Group byte-level BPE tokens into words: (word text, token positions). A new word starts at a token
    whose text begins with a space (byte-level "Ġ")."""
    words: list[tuple[str, list[int]]] = []
    for pos, t in enumerate(tokens):
        piece = tok.id_to_token(int(t)) or ""
        if not words or piece.startswith("Ġ"):
            words.append(("", []))
        words[-1][1].append(pos)
    return [(tok.decode([int(tokens[i]) for i in ps]).strip(), ps) for _, ps in words]


def neutralize(
    words: list[str],
    positions: list[list[int]],
    probs: Tensor,
    lex: FairnessLexicon,
    threshold: float,
) -> tuple[list[str], list[Change]]:
    """Apply the fairness rule (module docstring) to one caption.

    words[i] was emitted at token positions positions[i]; probs (T, V) holds p(token_t | prefix) for each
    token position t. Returns the new word list ("" = dropped) and the changes made.
    """
    out = list(words)
    changes: list[Change] = []
    kept_gender: set[str] = set()

    def p_at(i: int) -> Tensor | None:
        ps = positions[i]
        return probs[ps[0]] if len(ps) == 1 else None  # only single-token words have one distribution

    lower = [w.lower() for w in words]

    def before_person(i: int) -> bool:
        # "an old asian man": adjectives may be stacked in front of the noun they describe
        j = i + 1
        while j < len(lower) and (lower[j] in AGE_ADJECTIVES or lower[j] in ETHNICITY_ADJECTIVES):
            j += 1
        return j < len(lower) and lower[j] in PERSON_NOUNS

    for i, w in enumerate(words):
        lw = lower[i]
        p = p_at(i)
        if lw in PERSON_NOUNS:
            gender, age, plural = PERSON_NOUNS[lw]
            if gender == "n" and age == "any":
                continue
            g_conf, a_conf = lex.noun_confidence(p, lw) if p is not None else (0.0, 0.0)
            if g_conf >= threshold and a_conf >= threshold:
                if gender != "n":
                    kept_gender.add(gender)
                continue
            child = age == "child" and a_conf >= threshold
            repl = ("children" if plural else "child") if child else ("people" if plural else "person")
            if repl == lw:
                continue
            kind = "gender" if g_conf < threshold else "age"
            out[i] = repl
            changes.append(Change(kind, w, repl, round(min(g_conf, a_conf), 4)))
        elif lw in AGE_ADJECTIVES and before_person(i):
            conf = lex.age_adj_confidence(p, lw) if p is not None else 0.0
            if conf < threshold:
                out[i] = ""
                changes.append(Change("age", w, "", round(conf, 4)))
        elif lw in ETHNICITY_ADJECTIVES and before_person(i):
            conf = lex.ethnicity_confidence(p, lw) if p is not None else 0.0
            if conf < threshold:
                out[i] = ""
                changes.append(Change("ethnicity", w, "", round(conf, 4)))
    for i, w in enumerate(out):
        lw = w.lower()
        if lw in PRONOUNS and PRONOUNS[lw][0] not in kept_gender:
            repl = PRONOUNS[lw][1]
            if lw == "her" and (i + 1 >= len(out) or out[i + 1].lower() in _OBJECT_FOLLOWERS):
                repl = "them"  # "hugging her" / "with her ." is the object form
            out[i] = repl
            changes.append(Change("pronoun", w, repl, None))
            if repl == "they" and i + 1 < len(out) and out[i + 1].lower() in _AGREEMENT:
                out[i + 1] = _AGREEMENT[out[i + 1].lower()]
    return out, changes


# Words after which "her" is an object ("with her in the park"), not a possessive ("her dog").
_OBJECT_FOLLOWERS = {"in", "on", "at", "with", "and", "to", "while", "as", "from", "into", "up", "down",
                     "near", "by", "for", "."}  # fmt: skip


def bad_words_ids(tok: Tokenizer, words: Iterable[str]) -> list[list[int]]:
    """Token sequences that spell each word (with a leading space, and at the start) for `BadWords`."""
    seqs = {tuple(tok.encode(form)) for w in words for form in (" " + w, w)}
    return [list(s) for s in sorted(seqs) if s]


def remove_offensive(words: list[str], blocklist: set[str]) -> tuple[list[str], list[str]]:
    """Drop blocklisted words (case-insensitive, ignoring attached punctuation)."""
    kept, removed = [], []
    for w in words:
        if re.sub(r"[^\w-]", "", w.lower()) in blocklist:
            removed.append(w)
        else:
            kept.append(w)
    return kept, removed


def fix_articles(words: list[str]) -> list[str]:
    """ "a" / "an" agree with the next word (by its first letter, with common exceptions)."""
    out = list(words)
    for i in range(len(out) - 1):
        art, nxt = out[i].lower(), out[i + 1].lower()
        if art not in ("a", "an") or not nxt:
            continue
        vowel = (nxt[0] in "aeiou" and nxt not in _AN_EXCEPTIONS) or nxt in _AN_FORCED
        want = "an" if vowel else "a"
        if art != want:
            out[i] = want if out[i].islower() else want.capitalize()
    return out


def finish(text: str) -> str:
    """Display form: single spaces, no space before punctuation, capital first letter, final full stop."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([.,!?;:])", r"\1", text)
    if not text:
        return text
    text = text[0].upper() + text[1:]
    if text[-1] not in ".!?":
        text += "."
    return text


def postprocess(
    words: list[str],
    positions: list[list[int]] | None = None,
    probs: Tensor | None = None,
    *,
    lex: FairnessLexicon | None = None,
    threshold: float = 0.75,
    blocklist: set[str] | None = None,
) -> PostResult:
    """Fairness (when `lex`, `positions` and `probs` are given), offensive-term removal, articles, casing."""
    changes: list[Change] = []
    if lex is not None and positions is not None and probs is not None:
        words, changes = neutralize(words, positions, probs, lex, threshold)
    words = [w for w in words if w]
    removed: list[str] = []
    if blocklist:
        words, removed = remove_offensive(words, blocklist)
    words = fix_articles(words)
    return PostResult(finish(" ".join(words)), changes, removed)


__all__ = [
    "AGE_ADJECTIVES",
    "BLOCKLIST",
    "ETHNICITY_ADJECTIVES",
    "PERSON_NOUNS",
    "PRONOUNS",
    "Change",
    "FairnessLexicon",
    "PostResult",
    "bad_words_ids",
    "finish",
    "fix_articles",
    "neutralize",
    "postprocess",
    "remove_offensive",
    "token_words",
]
