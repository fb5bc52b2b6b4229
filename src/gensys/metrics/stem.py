"""Porter stemmer (Porter 1980), in NLTK's default mode, for METEOR's stem stage and ROUGE's `use_stemmer`.

NLTK's default mode ("NLTK_EXTENSIONS") departs from the 1980 paper in a few documented places, all
reproduced here because METEOR and ROUGE scores must equal nltk's and rouge-score's:
- a small table of irregular forms (skies -> sky, dying -> die, news -> news, ...);
- words of 1-2 letters are left alone;
- step 1a: a 4-letter word ending in "ies" becomes "...ie" (ties -> tie);
- step 1b: "ied" -> "ie" in 4-letter words, else "i";
- step 1c: y -> i only after a consonant that is not the first letter;
- the m=1 cvc test (step 1b, 5a) also accepts a two-letter vowel-consonant stem;
- step 2: "alli" -> "al" is applied and step 2 re-run, "bli" -> "ble", "fulli" -> "ful", "logi" -> "log".
Equality with nltk's PorterStemmer over real vocabularies is tested in tests/metrics/test_metrics_meteor.py.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

_VOWELS = frozenset("aeiou")

_IRREGULAR = {
    "sky": ("sky", "skies"),
    "die": ("dying",),
    "lie": ("lying",),
    "tie": ("tying",),
    "news": ("news",),
    "inning": ("innings", "inning"),
    "outing": ("outings", "outing"),
    "canning": ("cannings", "canning"),
    "howe": ("howe",),
    "proceed": ("proceed",),
    "exceed": ("exceed",),
    "succeed": ("succeed",),
}
_IRREGULAR_FORMS = {form: stem for stem, forms in _IRREGULAR.items() for form in forms}


def _consonants(w: str) -> list[bool]:
    """Per letter: True for a consonant. 'y' is a consonant at the start or after a vowel, else a vowel."""
    flags: list[bool] = []
    for i, ch in enumerate(w):
        if ch in _VOWELS:
            flags.append(False)
        elif ch == "y":
            flags.append(i == 0 or not flags[i - 1])
        else:
            flags.append(True)
    return flags


def _m(stem: str) -> int:
    """Porter's measure m: the number of vowel-run -> consonant-run transitions ([C](VC)^m[V])."""
    flags = _consonants(stem)
    return sum(1 for a, b in zip(flags, flags[1:]) if not a and b)


def _has_vowel(stem: str) -> bool:
    return not all(_consonants(stem))


def _double_consonant(w: str) -> bool:
    return len(w) >= 2 and w[-1] == w[-2] and _consonants(w)[-1]


def _cvc(w: str) -> bool:
    """Ends consonant-vowel-consonant with the last not w, x or y (or is a 2-letter vowel-consonant word)."""
    if len(w) >= 3:
        f = _consonants(w)
        if f[-3] and not f[-2] and f[-1] and w[-1] not in "wxy":
            return True
    if len(w) == 2:
        f = _consonants(w)
        return not f[0] and f[1]
    return False


Rule = tuple[str, str, Callable[[str], bool] | None]


def _apply(word: str, rules: list[Rule]) -> str:
    """The first rule whose suffix matches decides: replace if its condition holds on the stem, else keep."""
    for suffix, repl, cond in rules:
        if suffix == "*d":  # double consonant: drop one of the two letters
            if _double_consonant(word):
                stem = word[:-2]
                return stem + repl if cond is None or cond(stem) else word
            continue
        if word.endswith(suffix):
            stem = word[: len(word) - len(suffix)]
            return stem + repl if cond is None or cond(stem) else word
    return word


def _pos_m(stem: str) -> bool:
    return _m(stem) > 0


def _m_gt1(stem: str) -> bool:
    return _m(stem) > 1


def _step1a(w: str) -> str:
    if w.endswith("ies") and len(w) == 4:
        return w[:-1]
    return _apply(w, [("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)])


def _step1b(w: str) -> str:
    if w.endswith("ied"):
        return w[:-3] + ("ie" if len(w) == 4 else "i")
    if w.endswith("eed"):
        stem = w[:-3]
        return stem + "ee" if _m(stem) > 0 else w
    for suffix in ("ed", "ing"):
        if w.endswith(suffix) and _has_vowel(w[: -len(suffix)]):
            stem = w[: -len(suffix)]
            break
    else:
        return w
    last = stem[-1]
    return _apply(
        stem,
        [
            ("at", "ate", None),
            ("bl", "ble", None),
            ("iz", "ize", None),
            ("*d", last, lambda s: last not in "lsz"),
            ("", "e", lambda s: _m(s) == 1 and _cvc(s)),
        ],
    )


def _step1c(w: str) -> str:
    return _apply(w, [("y", "i", lambda s: len(s) > 1 and _consonants(s)[-1])])


_STEP2 = [
    ("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
    ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"), ("ization", "ize"),
    ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"),
    ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"), ("fulli", "ful"),
]  # fmt: skip


def _step2(w: str) -> str:
    if w.endswith("alli") and _m(w[:-4]) > 0:
        return _step2(w[:-4] + "al")
    rules: list[Rule] = [(s, r, _pos_m) for s, r in _STEP2]
    # "logi" -> "log" when the word minus "ogi" has m > 0 (a condition on a different stem than usual)
    rules.append(("logi", "log", lambda s: _m(w[:-3]) > 0))
    return _apply(w, rules)


_STEP3 = [
    ("icate", "ic"),
    ("ative", ""),
    ("alize", "al"),
    ("iciti", "ic"),
    ("ical", "ic"),
    ("ful", ""),
    ("ness", ""),
]
_STEP4 = ["al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou", "ism",
          "ate", "iti", "ous", "ive", "ize"]  # fmt: skip


def _step4(w: str) -> str:
    rules: list[Rule] = [
        (s, "", (lambda st: _m(st) > 1 and st[-1] in "st") if s == "ion" else _m_gt1) for s in _STEP4
    ]
    return _apply(w, rules)


def _step5a(w: str) -> str:
    if w.endswith("e"):
        stem = w[:-1]
        m = _m(stem)
        if m > 1 or (m == 1 and not _cvc(stem)):
            return stem
    return w


def _step5b(w: str) -> str:
    return w[:-1] if w.endswith("ll") and _m(w[:-1]) > 1 else w


@lru_cache(maxsize=200_000)
def porter_stem(word: str) -> str:
    """Stem one word (lower-cased first), exactly as nltk's PorterStemmer().stem(word)."""
    w = word.lower()
    if w in _IRREGULAR_FORMS:
        return _IRREGULAR_FORMS[w]
    if len(word) <= 2:
        return w
    w = _step1a(w)
    w = _step1b(w)
    w = _step1c(w)
    w = _step2(w)
    w = _apply(w, [(s, r, _pos_m) for s, r in _STEP3])
    w = _step4(w)
    w = _step5a(w)
    return _step5b(w)
