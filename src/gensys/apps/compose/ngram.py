"""The n-gram baseline: a word n-gram LM (interpolated absolute discounting) and a phrase completer over it.

Words are whitespace tokens, punctuation attached ("you." and "you" differ), exactly the units ExactMatch@N
counts. With counts c and discount D, for a history h and its shortened history h':

    P(w | h) = max(c(h, w) - D, 0) / c(h)  +  D * N1+(h) / c(h) * P(w | h')

where N1+(h) is the number of distinct words seen after h; unseen histories back off entirely, and the
unigram level is add-one smoothed over the vocabulary plus one unknown-word slot, so every level sums to 1.
Counts of order >= 2 below `min_count` are pruned (totals are taken after pruning, so normalisation holds).

`NgramBackend` proposes completions with a word-level beam search and plugs into the same predictor as the
transformer (triggering, post-processing, threshold), so `eval` compares the two on equal terms.
"""

from __future__ import annotations

import bisect
import gzip
import json
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from gensys.apps.compose.generator import Candidate, PromptItem
from gensys.data.atomic import atomic_write_bytes
from gensys.errors import CheckpointError

BOS = "<s>"
EOS = "</s>"
_SENTENCE_END = re.compile(r"[.!?]$")


class NgramLM:
    """Word n-gram counts with interpolated absolute-discounting probabilities (see the module docstring)."""

    def __init__(self, order: int = 4, discount: float = 0.75) -> None:
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if not 0.0 < discount < 1.0:
            raise ValueError(f"discount must be in (0, 1), got {discount}")
        self.order = order
        self.discount = discount
        # next[k][history of k words] = {word: count}, k = 0 .. order-1
        self.next: list[dict[tuple[str, ...], dict[str, int]]] = [{} for _ in range(order)]
        self._totals: list[dict[tuple[str, ...], int]] = []
        self.vocab: list[str] = []  # sorted, for prefix lookups

    # ---- training ---------------------------------------------------------------------------------------
    @classmethod
    def train(
        cls, texts: Iterable[str], order: int = 4, discount: float = 0.75, min_count: int = 2
    ) -> NgramLM:
        """Count n-grams over texts (one email body each, framed by <s> ... </s>)."""
        lm = cls(order, discount)
        docs = [[BOS] * (order - 1) + text.split() + [EOS] for text in texts]
        for k in range(order):  # one order at a time, pruned before the next: peak memory of one table
            counts: Counter = Counter()
            for words in docs:
                counts.update(tuple(words[i - k : i + 1]) for i in range(order - 1, len(words)))
            table: dict[tuple[str, ...], dict[str, int]] = defaultdict(dict)
            for gram, c in counts.items():
                if k > 0 and c < min_count:
                    continue
                table[gram[:-1]][gram[-1]] = c
            lm.next[k] = dict(table)
            del counts
        lm._finish()
        return lm

    def _finish(self) -> None:
        self._totals = [{h: sum(d.values()) for h, d in table.items()} for table in self.next]
        self.vocab = sorted(w for w in self.next[0].get((), {}) if w != BOS)
        self._n_unigrams = self._totals[0].get((), 0)
        self._top_unigrams = sorted(self.next[0].get((), {}).items(), key=lambda x: -x[1])[:64]

    # ---- probabilities ----------------------------------------------------------------------------------
    def prob(self, word: str, history: tuple[str, ...]) -> float:
        """P(word | history) (history of any length; the last order-1 words are used)."""
        history = history[-(self.order - 1) :] if self.order > 1 else ()
        uni = self.next[0].get((), {})
        p = (uni.get(word, 0) + 1) / (self._n_unigrams + len(uni) + 1)  # add-one incl. an unknown slot
        for k in range(1, len(history) + 1):
            h = history[len(history) - k :]
            seen = self.next[k].get(h)
            if not seen:
                continue  # unseen history: P(w | h) = P(w | h')
            total = self._totals[k][h]
            c = seen.get(word, 0)
            p = max(c - self.discount, 0.0) / total + self.discount * len(seen) / total * p
        return p

    def continuations(self, history: tuple[str, ...], prefix: str = "", limit: int = 32) -> list[str]:
        """Words worth scoring after `history`: those seen after its longest known suffixes, then the most
        frequent unigrams (only words starting with `prefix` when given)."""
        history = history[-(self.order - 1) :] if self.order > 1 else ()
        found: list[str] = []
        seen_words: set[str] = set()
        for k in range(len(history), 0, -1):
            d = self.next[k].get(history[len(history) - k :])
            if not d:
                continue
            for w, _ in sorted(d.items(), key=lambda x: -x[1]):
                if w.startswith(prefix) and w not in seen_words:
                    seen_words.add(w)
                    found.append(w)
            if len(found) >= limit:
                break
        if len(found) < limit:
            if prefix:
                lo = bisect.bisect_left(self.vocab, prefix)
                hi = bisect.bisect_right(self.vocab, prefix + "\U0010ffff")
                uni = self.next[0][()]
                extra = sorted(self.vocab[lo:hi], key=lambda w: -uni[w])
            else:
                extra = [w for w, _ in self._top_unigrams]
            for w in extra:
                if w not in seen_words and w != BOS:
                    seen_words.add(w)
                    found.append(w)
                if len(found) >= limit:
                    break
        return found[:limit]

    # ---- persistence ------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """gzip JSON: {"order", "discount", "next": [{history joined by spaces: {word: count}}]}."""
        obj = {
            "order": self.order,
            "discount": self.discount,
            "next": [{" ".join(h): d for h, d in table.items()} for table in self.next],
        }
        data = gzip.compress(json.dumps(obj, ensure_ascii=False).encode("utf-8"), mtime=0)
        return atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: str | Path) -> NgramLM:
        path = Path(path)
        try:
            obj = json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))
            lm = cls(int(obj["order"]), float(obj["discount"]))
            lm.next = [{tuple(h.split(" ")) if h else (): d for h, d in t.items()} for t in obj["next"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path} is not an n-gram model written by gensys ({e})") from None
        lm._finish()
        return lm


class NgramBackend:
    """Word-level beam search over an `NgramLM`; candidates end at sentence punctuation, </s> or max words."""

    name = "ngram"

    def __init__(self, lm: NgramLM, *, max_words: int = 5, beam: int = 3, branch: int = 8) -> None:
        self.lm = lm
        self.max_words = max_words
        self.beam = beam
        self.branch = branch

    def complete(self, prefix: str, partial: str) -> list[tuple[list[str], float, str]]:
        """n-best (words, mean log-prob per word, ended) continuing `prefix` (+ the half-typed `partial`)."""
        history = tuple([BOS] * (self.lm.order - 1) + prefix.split())
        beams: list[tuple[list[str], float]] = [([], 0.0)]
        done: list[tuple[list[str], float, str]] = []
        for step in range(self.max_words):
            grown: list[tuple[list[str], float]] = []
            for words, lp in beams:
                h = history + tuple(words)
                for w in self.lm.continuations(h, partial if step == 0 else "", self.branch):
                    grown.append((words + [w], lp + math.log(self.lm.prob(w, h))))
            grown.sort(key=lambda x: -x[1] / len(x[0]))
            beams = []
            for words, lp in grown:
                if words[-1] == EOS:
                    if len(words) > 1:
                        done.append((words[:-1], lp / len(words), "eos"))
                elif _SENTENCE_END.search(words[-1]):
                    done.append((words, lp / len(words), "stop"))
                elif len(beams) < self.beam:
                    beams.append((words, lp))
            if not beams:
                break
        done.extend((w, lp / len(w), "words") for w, lp in beams)
        done.sort(key=lambda x: -x[1])
        return done[: self.beam]

    def propose(self, items: list[PromptItem], deadline: float | None = None) -> list[list[Candidate] | None]:
        out: list[list[Candidate] | None] = []
        for it in items:
            if deadline is not None and time.perf_counter() > deadline:
                out.append(None)
                continue
            partial = it.tail.lstrip()
            lead = it.tail[: len(it.tail) - len(partial)]
            cands = []
            for words, score, ended in self.complete(it.prefix, partial):
                # The words follow the tail; with no tail, a space, except at a line start (prompt ends "\n").
                sep = "" if lead or partial or it.prefix[-1:].isspace() else " "
                text = lead + sep + " ".join(words)
                cands.append(Candidate(text, math.exp(score), ended))
            out.append(cands)
        return out


__all__ = ["BOS", "EOS", "NgramBackend", "NgramLM"]
