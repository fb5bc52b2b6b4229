"""gensys.apps.rag: answers from a company Q&A site (Stack Exchange dumps, documents) with citations.

ingest.py    threads / dumps / docs -> `Chunk`s (paragraph- and code-aware chunking, ACL groups)
embed.py     all-MiniLM-L6-v2 encoder (bundled weights, offline) + on-disk embedding cache
index.py     `RagIndex`: fp16 vectors (safetensors) + SQLite metadata + BM25 (bm25s); ACL mask before top-k;
             incremental upsert/delete; exact (torch) or faiss HNSW dense backend
search.py    `Searcher`: dense + BM25, RRF or weighted fusion, boosts, filters
answer.py    `Answerer`: `ExtractiveAnswerer`, `GenerativeAnswerer` (any decoder-LM checkpoint)
evaluate.py  Recall@k / MRR / nDCG@10 on linked questions, latency, citation figures
predictor.py `load_predictor(dir) -> RagPredictor` with `ask(...)` and `search(...)`
recipe.py    `gensys rag prepare|index|search|ask|eval|predict|train`
"""
