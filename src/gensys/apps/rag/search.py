"""Search: dense + BM25 candidates under the user's ACL mask, fused (RRF or weighted scores), boosted.

    searcher = Searcher(index, embedder, SearchConfig())
    hits = searcher.search("how do I mint a token", groups=["everyone"], k=5, filters={"site": "..."})

Both retrievers see only the rows the user may read (the mask is applied before their top-k), so fusion,
score normalisation and boosts only ever look at allowed chunks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from gensys.apps.rag.config import SearchConfig
from gensys.apps.rag.embed import Embedder
from gensys.apps.rag.index import RagIndex

Ranked = list[tuple[int, float]]  # (row, score), best first


def rrf_fuse(lists: Sequence[Ranked], weights: Sequence[float], k: int = 60) -> Ranked:
    """Reciprocal rank fusion: score(row) = sum_i w_i / (k + rank_i(row)), ranks from 1."""
    fused: dict[int, float] = {}
    for ranked, w in zip(lists, weights):
        for rank, (row, _) in enumerate(ranked, start=1):
            fused[row] = fused.get(row, 0.0) + w / (k + rank)
    return sorted(fused.items(), key=lambda x: (-x[1], x[0]))


def weighted_fuse(lists: Sequence[Ranked], weights: Sequence[float]) -> Ranked:
    """Weighted sum of min-max normalised scores; a row missing from a list gets 0 from it."""
    fused: dict[int, float] = {}
    for ranked, w in zip(lists, weights):
        if not ranked:
            continue
        hi, lo = ranked[0][1], ranked[-1][1]
        span = hi - lo
        for row, s in ranked:
            norm = (s - lo) / span if span > 0 else 1.0
            fused[row] = fused.get(row, 0.0) + w * norm
    return sorted(fused.items(), key=lambda x: (-x[1], x[0]))


@dataclass
class Hit:
    """One retrieved chunk with its final score and where it ranked in each retriever (None = absent)."""

    row: int
    score: float
    dense_rank: int | None = None
    bm25_rank: int | None = None
    expanded_from: int | None = None  # row of the retrieved question this answer was added for


class Searcher:
    """Query-time retrieval over a `RagIndex` with the dense encoder."""

    def __init__(self, index: RagIndex, embedder: Embedder, cfg: SearchConfig | None = None) -> None:
        index.check_embedder(embedder)
        self.index = index
        self.embedder = embedder
        self.cfg = cfg or SearchConfig()

    def search(
        self,
        query: str,
        *,
        groups: Iterable[str],
        k: int | None = None,
        filters: dict[str, Any] | None = None,
        method: str | None = None,
        cfg: SearchConfig | None = None,
        query_vec: Tensor | None = None,
    ) -> list[Hit]:
        """Top-k chunks readable by `groups` that pass `filters`; `method` overrides hybrid/bm25/dense,
        `cfg` the whole search config; `query_vec` (D,) skips embedding the query (eval embeds in batches)."""
        c = cfg or self.cfg
        if method is not None:
            c = replace(c, method=method)
        k = k or c.k
        allowed = self.index.allowed(groups, filters)
        depth = max(c.depth, k)
        dense: Ranked = []
        sparse: Ranked = []
        if c.method in ("hybrid", "dense"):
            qvec = self.embedder.encode([query])[0] if query_vec is None else query_vec  # (D,)
            dense = self.index.dense_search(qvec, depth, allowed)
        if c.method in ("hybrid", "bm25"):
            sparse = self.index.bm25_search(query, depth, allowed)
        if c.method == "dense":
            fused = dense
        elif c.method == "bm25":
            fused = sparse
        elif c.fusion == "rrf":
            fused = rrf_fuse([dense, sparse], [c.dense_weight, c.bm25_weight], c.rrf_k)
        else:
            fused = weighted_fuse([dense, sparse], [c.dense_weight, c.bm25_weight])
        if c.accepted_boost or c.score_boost:
            fused = self._boost(fused, c)
        # Ties are broken by chunk id, not by row, so results do not depend on the order chunks were added.
        fused = sorted(fused, key=lambda x: (-x[1], self.index.chunks[x[0]].id))
        d_rank = {row: i + 1 for i, (row, _) in enumerate(dense)}
        b_rank = {row: i + 1 for i, (row, _) in enumerate(sparse)}
        return [Hit(row, s, d_rank.get(row), b_rank.get(row)) for row, s in fused[:k]]

    def _boost(self, fused: Ranked, c: SearchConfig) -> Ranked:
        # Multiplicative, so it works for any fusion's score scale; negative scores (cosine) are shifted.
        if not fused:
            return fused
        rows = torch.tensor([r for r, _ in fused])
        scores = torch.tensor([s for _, s in fused], dtype=torch.float64)
        shift = max(-float(scores.min()), 0.0)
        mult = 1.0 + c.accepted_boost * self.index.accepted[rows].double()
        mult += c.score_boost * torch.log1p(self.index.votes[rows].double().clamp(min=0.0))
        return list(zip(rows.tolist(), ((scores + shift) * mult - shift).tolist()))

    def with_answers(
        self, hits: list[Hit], query_vec: Tensor, groups: Iterable[str], filters: dict[str, Any] | None = None
    ) -> list[Hit]:
        """`hits` with, after each retrieved question chunk, the best answer of its thread that the user may
        read and that is not already there (accepted first, then votes; its chunk closest to the query).

        Similar questions are what retrieval finds best; their answers are what an answer should quote.
        """
        allowed = self.index.allowed(groups, filters)  # the same ACL and filters as the search itself
        have = {h.row for h in hits}
        out: list[Hit] = []
        for h in hits:
            out.append(h)
            c = self.index.chunk(h.row)
            if c.kind != "question":
                continue
            rows = [r for r in self.index.thread_rows(c.thread_id).tolist() if allowed[r]]
            answers = [r for r in rows if self.index.chunk(r).kind == "answer"]
            if not answers or any(r in have for r in answers):
                continue
            best = max(answers, key=lambda r: (self.index.chunk(r).accepted, self.index.chunk(r).score))
            post = self.index.chunk(best).post_id
            cands = torch.tensor([r for r in answers if self.index.chunk(r).post_id == post])
            sims = self.index.vectors[cands] @ query_vec  # (n,)
            row = int(cands[int(sims.argmax())])
            out.append(Hit(row, float(sims.max()), expanded_from=h.row))
            have.add(row)
        return out

    def hit_dict(self, hit: Hit, snippet_chars: int = 300) -> dict[str, Any]:
        """The public form of a hit: what `search` and `ask(...)["retrieved"]` return."""
        c = self.index.chunk(hit.row)
        text = c.text
        return {
            "id": c.id,
            "title": c.title,
            "url": c.url,
            "site": c.site,
            "snippet": text if len(text) <= snippet_chars else text[:snippet_chars].rsplit(" ", 1)[0] + " …",
            "score": round(hit.score, 6),
            "text": text,
            "kind": c.kind,
            "thread_id": c.thread_id,
            "tags": list(c.tags),
            "votes": c.score,
            "accepted": c.accepted,
            "date": c.date,
            "dense_rank": hit.dense_rank,
            "bm25_rank": hit.bm25_rank,
            "answer_of": None if hit.expanded_from is None else self.index.chunk(hit.expanded_from).id,
        }
