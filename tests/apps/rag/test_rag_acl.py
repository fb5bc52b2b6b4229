"""Access control never leaks: property test with random chunk groups and random user groups (hypothesis)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gensys.apps.rag.config import IndexConfig, SearchConfig
from gensys.apps.rag.embed import EmbeddingCache, embed_with_cache
from gensys.apps.rag.index import RagIndex
from gensys.apps.rag.search import Searcher

GROUPS = ["g0", "g1", "g2", "g3"]
QUERIES = [
    "mint a token",
    "qubit coherence time",
    "mqtt broker",
    "wallet recovery words",
    "stake pool blocks",
]


@pytest.fixture(scope="module")
def material(corpus_chunks, embedder, cache_dir):
    cache = EmbeddingCache(cache_dir, embedder.fingerprint)
    vecs = embed_with_cache(
        embedder, [c.embed_text() for c in corpus_chunks], [c.text_hash() for c in corpus_chunks], cache
    )
    return corpus_chunks, vecs, embedder.encode(QUERIES)


def _index(chunks, vecs, embedder) -> RagIndex:
    index = RagIndex(
        {"name": embedder.name, "fingerprint": embedder.fingerprint, "dim": embedder.dim}, IndexConfig()
    )
    index.add_embedded(chunks, vecs)
    return index


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_acl_never_leaks(material, embedder, data) -> None:
    chunks, vecs, qvecs = material
    # random ACLs: every chunk readable by 0..2 random groups; a user in 0..3 random groups
    acls = data.draw(
        st.lists(st.sets(st.sampled_from(GROUPS), max_size=2), min_size=len(chunks), max_size=len(chunks))
    )
    user = data.draw(st.sets(st.sampled_from(GROUPS), max_size=3))
    qi = data.draw(st.integers(0, len(QUERIES) - 1))
    k = data.draw(st.integers(1, len(chunks) + 2))
    method = data.draw(st.sampled_from(["dense", "bm25", "hybrid"]))
    fusion = data.draw(st.sampled_from(["rrf", "weighted"]))
    boost = data.draw(st.sampled_from([0.0, 0.5]))
    cfg = SearchConfig(method=method, fusion=fusion, accepted_boost=boost, score_boost=boost)
    mine = [dataclasses.replace(c, groups=sorted(g)) for c, g in zip(chunks, acls)]
    visible = [i for i, g in enumerate(acls) if g & user]

    s = Searcher(_index(mine, vecs, embedder), embedder, cfg)
    hits = s.search(QUERIES[qi], groups=sorted(user), k=k, query_vec=qvecs[qi])
    ids = [s.index.chunk(h.row).id for h in hits]
    # 1. nothing outside the user's groups is ever returned
    assert all(set(s.index.chunk(h.row).groups) & user for h in hits)
    assert len(set(ids)) == len(ids)
    # the answers added for retrieved questions obey the same ACL
    expanded = s.with_answers(hits, qvecs[qi], sorted(user))
    assert all(set(s.index.chunk(h.row).groups) & user for h in expanded)
    assert [h.row for h in expanded if h.expanded_from is None] == [h.row for h in hits]
    # 2. filtering happens before top-k: hidden chunks never take a slot (no short result lists)
    if method != "bm25":
        assert len(hits) == min(k, len(visible))
    # 3. the dense results (ids and scores) are exactly those of an index that never held the hidden chunks,
    #    so a user cannot learn that hidden chunks exist from what retrieval returns
    if visible:
        alone = Searcher(_index([mine[i] for i in visible], vecs[visible], embedder), embedder, cfg)
        a = s.search(QUERIES[qi], groups=sorted(user), k=k, method="dense", query_vec=qvecs[qi])
        b = alone.search(QUERIES[qi], groups=sorted(user), k=k, method="dense", query_vec=qvecs[qi])
        assert [s.index.chunk(h.row).id for h in a] == [alone.index.chunk(h.row).id for h in b]
        # equal up to float summation order (the matrix-vector product runs over another matrix)
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
    else:
        assert hits == []
