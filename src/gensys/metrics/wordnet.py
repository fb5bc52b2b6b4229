"""A minimal reader of the WordNet 3.0 database files, for METEOR's synonym stage.

No download: it reads the files Debian's `wordnet-base` package installs in /usr/share/wordnet (or an
nltk_data `corpora/wordnet` folder, same format), or the folder named by $GENSYS_WORDNET. It answers one
question the way
nltk's `wordnet.synsets(word)` + `lemma.name()` does: which lemma names share a synset with any base form of
`word` in any part of speech. Base forms come from the exception lists, else one round of nltk's detachment
rules (e.g. "dogs" -> "dog", "running" -> "run"), kept when the form is in that part of speech's index.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from gensys.metrics.inputs import MetricInputError

_POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_DETACH = {
    "n": [("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"),
          ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}  # fmt: skip
DEFAULT_DIRS = ("/usr/share/wordnet", "~/nltk_data/corpora/wordnet", "/usr/share/nltk_data/corpora/wordnet")


def find_wordnet(path: str | os.PathLike | None = None) -> Path:
    """The WordNet database folder: `path`, else $GENSYS_WORDNET, else the first of DEFAULT_DIRS present."""
    candidates = [path] if path else [os.environ.get("GENSYS_WORDNET") or "", *DEFAULT_DIRS]
    for c in candidates:
        p = Path(c).expanduser() if c else None
        if p is not None and (p / "index.noun").is_file() and (p / "data.noun").is_file():
            return p
    raise MetricInputError(
        "WordNet 3.0 database not found (looked in "
        + ", ".join(str(c) for c in candidates if c)
        + "); install Debian's wordnet-base, set GENSYS_WORDNET, or score METEOR with synonyms=False"
    )


class WordNet:
    """Lemma index, exception lists and synset lemma names of one WordNet database folder."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = find_wordnet(path)
        self._index: dict[str, dict[str, tuple[int, ...]]] = {}
        self._exceptions: dict[str, dict[str, list[str]]] = {}
        for pos, name in _POS_FILES.items():
            with open(self.path / f"index.{name}", encoding="utf-8") as f:
                for line in f:
                    if line.startswith(" "):  # licence header
                        continue
                    tok = line.split()
                    n_synsets, n_pointers = int(tok[2]), int(tok[3])
                    first = 4 + n_pointers + 2  # after the pointer symbols, sense_cnt and tagsense_cnt
                    self._index.setdefault(tok[0], {})[pos] = tuple(map(int, tok[first : first + n_synsets]))
            exc: dict[str, list[str]] = {}
            exc_file = self.path / f"{name}.exc"
            if exc_file.is_file():
                with open(exc_file, encoding="utf-8") as f:
                    for line in f:
                        tok = line.split()
                        if tok:
                            exc[tok[0]] = tok[1:]
            self._exceptions[pos] = exc
        self._data = {pos: open(self.path / f"data.{name}", "rb") for pos, name in _POS_FILES.items()}  # noqa: SIM115

    def close(self) -> None:
        for f in self._data.values():
            f.close()

    def base_forms(self, word: str, pos: str) -> list[str]:
        """Forms of `word` (itself included) that are lemmas of part of speech `pos`."""
        exc = self._exceptions[pos]
        if word in exc:
            forms = exc[word]
        else:
            forms = [word[: len(word) - len(old)] + new for old, new in _DETACH[pos] if word.endswith(old)]
        out: list[str] = []
        for form in [word, *forms]:
            if pos in self._index.get(form, {}) and form not in out:
                out.append(form)
        return out

    @lru_cache(maxsize=100_000)  # noqa: B019 -- one WordNet per process; the cache is the point
    def _synset_names(self, pos: str, offset: int) -> tuple[str, ...]:
        f = self._data[pos]
        f.seek(offset)
        fields = f.readline().decode("utf-8").split("|", 1)[0].split()
        n_words = int(fields[3], 16)
        names = fields[4 : 4 + 2 * n_words : 2]
        # adjectives may carry a syntactic marker such as "(a)" or "(ip)"; it is not part of the name
        return tuple(n.split("(", 1)[0] if n.endswith(")") else n for n in names)

    @lru_cache(maxsize=200_000)  # noqa: B019
    def synonyms(self, word: str) -> frozenset[str]:
        """Lemma names (case kept, as in the database) of all synsets of `word`'s base forms, all POS."""
        word = word.lower()
        names: set[str] = set()
        for pos in _POS_FILES:
            for form in self.base_forms(word, pos):
                for offset in self._index[form][pos]:
                    names.update(self._synset_names(pos, offset))
        return frozenset(names)


@lru_cache(maxsize=4)
def load_wordnet(path: str | None = None) -> WordNet:
    """A cached WordNet for `path` (loading the index takes about a second)."""
    return WordNet(path)
