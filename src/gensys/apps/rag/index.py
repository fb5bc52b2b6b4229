"""The hybrid index: dense vectors + BM25 + chunk metadata, with ACL and metadata filters before top-k.

On disk (one folder, replaced atomically on every save):

    index.json           format version, embedding model (name + weights fingerprint), counts, BM25 settings
    vectors.safetensors  (N, D) fp16 unit vectors, rows in the order of the `chunks` table
    meta.sqlite          table `posts` (post_id, thread_id, kind, site, title, tags, score, accepted, url,
                         date, groups; lists as JSON) and table `chunks` (row, post_id, n, zlib-compressed
                         text); a chunk id is "<post_id>#<n>"
    bm25/                the bm25s index over title + text of every chunk (index.save_bm25=false leaves it
                         out to keep a shipped index small; it is then rebuilt from the texts at load)
    dense.faiss          only with index.backend=faiss: the HNSW graph

Updates (`upsert`, `delete_posts`) work on the loaded index and never re-embed an unchanged text (vectors
are reused by text hash); BM25 is re-indexed from the stored texts because its IDF statistics are
corpus-wide (seconds even at 100k chunks). An index refuses to mix embedding models.

Access control: `allowed(groups, filters)` is a boolean row mask; both retrievers score only allowed rows
(forbidden rows get -inf before top-k), so results are never short because of hidden chunks and a hidden
chunk's score never appears. Known limit: BM25's IDF counts every chunk of the corpus, hidden ones too.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import uuid
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from gensys.apps.rag.config import IndexConfig, RagError
from gensys.apps.rag.embed import Embedder, EmbeddingCache, embed_with_cache
from gensys.apps.rag.ingest import Chunk, check_unique

INDEX_FORMAT = 1
FILTER_KEYS = ("site", "tags", "date_from", "date_to", "exclude_threads")

_POST_COLUMNS = (
    "post_id",
    "thread_id",
    "kind",
    "site",
    "title",
    "tags",
    "score",
    "accepted",
    "url",
    "date",
    "groups",
)


def _timestamp(value: str) -> float:
    """Seconds since the epoch of an ISO date ("2021-05-01" or "2021-05-01T10:00:00.123"), naive = UTC."""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise RagError(f"not an ISO date: {value!r} (expected e.g. 2021-05-01)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


# ---------------------------------------------------------------------------------------------------------
# dense backends: one interface, `search(query (D,), k, allowed (N,) bool) -> (scores (k',), rows (k',))`


class ExactBackend:
    """Exact inner-product search with one matrix-vector product (fastest here up to ~1M x 384)."""

    name = "exact"

    def __init__(self, vectors: Tensor) -> None:
        self.vectors = vectors  # (N, D) float32

    def search(self, query: Tensor, k: int, allowed: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.vectors @ query  # (N,)
        scores = scores.masked_fill(~allowed, float("-inf"))
        k = min(k, int(allowed.sum()))
        top = torch.topk(scores, k) if k > 0 else None
        if top is None:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        return top.values, top.indices


class FaissBackend:
    """Approximate search with a faiss HNSW graph; the ACL/filter mask is applied inside the graph walk
    (faiss IDSelectorBitmap), so filtering still happens before top-k. Needs `pip install faiss-cpu`."""

    name = "faiss"

    def __init__(self, vectors: Tensor, m: int = 32, ef_search: int = 128, path: Path | None = None) -> None:
        try:
            import faiss
        except ImportError:
            raise RagError("index.backend=faiss needs `pip install faiss-cpu`") from None
        self.faiss = faiss
        self.ef_search = ef_search
        index = None
        if path is not None and path.is_file():
            index = faiss.read_index(str(path))
            if index.ntotal != vectors.shape[0]:
                index = None  # stale graph: rebuild
        if index is None:
            index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 2 * m
            if vectors.shape[0]:
                index.add(vectors.numpy().astype(np.float32))
        self.index = index

    def save(self, path: Path) -> None:
        self.faiss.write_index(self.index, str(path))

    def search(self, query: Tensor, k: int, allowed: Tensor) -> tuple[Tensor, Tensor]:
        n_allowed = int(allowed.sum())
        k = min(k, n_allowed)
        if k == 0:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        bitmap = np.packbits(allowed.numpy().astype(np.uint8), bitorder="little")
        params = self.faiss.SearchParametersHNSW(
            sel=self.faiss.IDSelectorBitmap(bitmap), efSearch=max(self.ef_search, k)
        )
        scores, rows = self.index.search(query.numpy()[None].astype(np.float32), k, params=params)
        keep = rows[0] >= 0  # HNSW may find fewer than k allowed rows under a very narrow filter
        return torch.from_numpy(scores[0][keep]).float(), torch.from_numpy(rows[0][keep]).long()


# ---------------------------------------------------------------------------------------------------------


class RagIndex:
    """Chunks + their vectors + BM25, searchable under an ACL mask. See the module docstring."""

    def __init__(self, embedding: dict[str, Any], cfg: IndexConfig | None = None) -> None:
        self.cfg = cfg or IndexConfig()
        self.embedding = dict(embedding)  # {"name", "fingerprint", "dim"}
        self.chunks: list[Chunk] = []
        self.hashes: list[str] = []
        self.vectors = torch.empty(0, int(embedding["dim"]))  # (N, D) float32 in memory
        self._dirty = True
        self._bm25_stale = True  # BM25 must be re-indexed from the texts
        self._tokens: dict[
            str, list[str]
        ] = {}  # BM25 tokens by text hash: an update tokenizes new texts only
        self._bm25: Any = None
        self._dense: ExactBackend | FaissBackend | None = None
        self._faiss_path: Path | None = None

    # ---- building and updating ----------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        chunks: list[Chunk],
        embedder: Embedder,
        cfg: IndexConfig | None = None,
        cache: EmbeddingCache | None = None,
        progress: bool = False,
    ) -> RagIndex:
        """A new index of `chunks` (vectors from `cache` where present)."""
        index = cls(embedder_info(embedder), cfg)
        index.upsert(chunks, embedder, cache, progress=progress)
        return index

    def check_embedder(self, embedder: Embedder) -> None:
        """Refuse to mix vectors of two embedding models in one index."""
        if embedder.fingerprint != self.embedding["fingerprint"]:
            raise RagError(
                f"the index was built with embedding model {self.embedding['fingerprint']!r} but the "
                f"encoder is {embedder.fingerprint!r}; rebuild the index (gensys rag index --rebuild)"
            )

    def upsert(
        self,
        chunks: list[Chunk],
        embedder: Embedder,
        cache: EmbeddingCache | None = None,
        progress: bool = False,
    ) -> dict[str, int]:
        """Add new posts and replace changed ones: every post of `chunks` loses its old chunks first.

        Only texts not in the index (by hash) and not in `cache` are embedded. Returns counts: added,
        removed (old chunks of these posts), reused (from the index), from_cache, embedded.
        """
        self.check_embedder(embedder)
        check_unique(chunks)
        old_rows = {h: i for i, h in enumerate(self.hashes)}
        hashes = [c.text_hash() for c in chunks]
        vectors = torch.empty(len(chunks), self.vectors.shape[1])
        missing = []
        for i, h in enumerate(hashes):
            if h in old_rows:
                vectors[i] = self.vectors[old_rows[h]]
            else:
                missing.append(i)
        reused = len(chunks) - len(missing)
        cached = sum(cache.get(hashes[i]) is not None for i in missing) if cache is not None else 0
        if missing:
            vectors[missing] = embed_with_cache(
                embedder, [chunks[i].embed_text() for i in missing], [hashes[i] for i in missing], cache,
                progress=progress,
            )  # fmt: skip
        removed = self.add_embedded(chunks, vectors, hashes)
        return {
            "added": len(chunks),
            "removed": removed,
            "reused": reused,  # vectors already in the index (same text)
            "from_cache": cached,  # vectors from the embedding cache
            "embedded": len(missing) - cached,  # texts run through the encoder
        }

    def add_embedded(self, chunks: list[Chunk], vectors: Tensor, hashes: list[str] | None = None) -> int:
        """Upsert chunks whose vectors (N, D) are already computed (by this index's model); returns the
        number of old chunks replaced. Used by `upsert` and by benchmarks with synthetic vectors."""
        if vectors.shape != (len(chunks), self.vectors.shape[1]):
            raise RagError(
                f"vectors {tuple(vectors.shape)} != {len(chunks)} chunks x {self.vectors.shape[1]} dims"
            )
        check_unique(chunks)
        for c in chunks:
            _chunk_number(c)  # ids must be "<post_id>#<n>" (how the table stores them)
        posts = {c.post_id for c in chunks}
        removed = self._remove(lambda c: c.post_id in posts)
        self.chunks.extend(chunks)
        self.hashes.extend(hashes if hashes is not None else [c.text_hash() for c in chunks])
        # Kept at the fp16 precision they are stored in, so a loaded index scores exactly like the built one.
        self.vectors = torch.cat([self.vectors, vectors.to(torch.float16).float()])
        self._dirty = self._bm25_stale = True
        return removed

    def delete_posts(self, post_ids: Iterable[str]) -> int:
        """Remove every chunk of these posts (ids like "<site>/a/123"); returns how many chunks went."""
        gone = set(post_ids)
        n = self._remove(lambda c: c.post_id in gone or c.thread_id in gone)
        if n:
            self._dirty = self._bm25_stale = True
        return n

    def _remove(self, drop: Any) -> int:
        keep = [i for i, c in enumerate(self.chunks) if not drop(c)]
        removed = len(self.chunks) - len(keep)
        if removed:
            self.chunks = [self.chunks[i] for i in keep]
            self.hashes = [self.hashes[i] for i in keep]
            self.vectors = self.vectors[torch.tensor(keep, dtype=torch.long)]
        return removed

    def __len__(self) -> int:
        return len(self.chunks)

    # ---- derived structures (rebuilt after changes) ------------------------------------------------------
    def _refresh(self) -> None:
        if not self._dirty:
            return
        import bm25s

        self._pos = {c.id: i for i, c in enumerate(self.chunks)}
        by: dict[str, dict[str, list[int]]] = {"group": {}, "site": {}, "tag": {}, "thread": {}}
        for i, c in enumerate(self.chunks):
            for g in c.groups:
                by["group"].setdefault(g, []).append(i)
            by["site"].setdefault(c.site, []).append(i)
            for t in c.tags:
                by["tag"].setdefault(t, []).append(i)
            by["thread"].setdefault(c.thread_id, []).append(i)
        # row lists as tensors, so building a query's mask is a few indexed writes
        self._rows_by = {k: {v: torch.tensor(rows) for v, rows in d.items()} for k, d in by.items()}
        self._dates = torch.tensor(
            [_timestamp(c.date) if c.date else float("nan") for c in self.chunks], dtype=torch.float64
        )
        self.accepted = torch.tensor([c.accepted for c in self.chunks], dtype=torch.bool)
        self.votes = torch.tensor([float(c.score) for c in self.chunks])
        if self._bm25 is None or self._bm25_stale:
            self._bm25 = bm25s.BM25(k1=self.cfg.bm25_k1, b=self.cfg.bm25_b)
            self._bm25.index(self._corpus_ids(), show_progress=False)
        if self.cfg.backend == "faiss":
            self._dense = FaissBackend(
                self.vectors, self.cfg.faiss_m, self.cfg.faiss_ef_search, self._faiss_path
            )
        else:
            self._dense = ExactBackend(self.vectors)
        self._faiss_path = None
        self._bm25_stale = False
        self._dirty = False

    def _corpus_ids(self) -> tuple[list[list[int]], dict[str, int]]:
        """(token ids per chunk, vocabulary) for bm25s; texts seen before are not tokenized again."""
        new = [(h, c.embed_text()) for h, c in zip(self.hashes, self.chunks) if h not in self._tokens]
        if new:
            for (h, _), toks in zip(new, self._tokenize([t for _, t in new])):
                self._tokens[h] = toks
        live = set(self.hashes)
        for h in [h for h in self._tokens if h not in live]:
            del self._tokens[h]
        vocab: dict[str, int] = {}
        ids = [[vocab.setdefault(t, len(vocab)) for t in self._tokens[h]] for h in self.hashes]
        vocab.setdefault("", len(vocab))  # bm25s scores token-less documents through an empty token
        return (ids or [[vocab[""]]]), vocab

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(
            texts, stopwords=self.cfg.stopwords or None, return_ids=False, show_progress=False
        )

    # ---- retrieval ---------------------------------------------------------------------------------------
    def allowed(self, groups: Iterable[str], filters: dict[str, Any] | None = None) -> Tensor:
        """(N,) bool: rows readable by a member of `groups` that pass `filters`.

        filters: site (str or list), tags (any of), date_from / date_to (ISO dates, inclusive),
        exclude_threads (thread ids hidden from the results, e.g. the query's own thread in eval).
        """
        self._refresh()
        n = len(self.chunks)
        mask = torch.zeros(n, dtype=torch.bool)
        for g in set(groups):
            rows = self._rows_by["group"].get(g)
            if rows is not None:
                mask[rows] = True
        for key, value in (filters or {}).items():
            if key not in FILTER_KEYS:
                raise RagError(f"unknown search filter {key!r}; expected one of {', '.join(FILTER_KEYS)}")
            if value in (None, "", []):
                continue
            if key in ("site", "tags"):
                values = [value] if isinstance(value, str) else list(value)
                keep = torch.zeros(n, dtype=torch.bool)
                for v in values:
                    rows = self._rows_by["site" if key == "site" else "tag"].get(v)
                    if rows is not None:
                        keep[rows] = True
                mask &= keep
            elif key == "date_from":
                mask &= self._dates >= _timestamp(str(value))  # unknown dates (NaN) fail both bounds
            elif key == "date_to":
                bound = _timestamp(str(value))
                if len(str(value)) <= 10:  # a bare day includes that whole day
                    bound += 86400 - 1e-3
                mask &= self._dates <= bound
            else:
                for t in [value] if isinstance(value, str) else value:
                    rows = self._rows_by["thread"].get(t)
                    if rows is not None:
                        mask[rows] = False
        return mask

    def dense_search(self, query_vec: Tensor, k: int, allowed: Tensor) -> list[tuple[int, float]]:
        """Top-k (row, cosine) among allowed rows."""
        self._refresh()
        assert self._dense is not None
        scores, rows = self._dense.search(query_vec.float(), k, allowed)
        return list(zip(rows.tolist(), scores.tolist()))

    def bm25_search(self, query: str, k: int, allowed: Tensor) -> list[tuple[int, float]]:
        """Top-k (row, BM25 score) among allowed rows that share at least one term with the query."""
        self._refresh()
        tokens = [t for t in self._tokenize([query])[0] if t in self._bm25.vocab_dict]
        if not tokens or not len(self.chunks):
            return []
        scores = self._bm25.get_scores(tokens)  # (N,) numpy
        scores = np.where(allowed.numpy() & (scores > 0), scores, -np.inf)
        k = min(k, int(np.isfinite(scores).sum()))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(r), float(scores[r])) for r in top]

    def thread_rows(self, thread_id: str) -> Tensor:
        """Rows of every chunk of a thread (a LongTensor, empty if none)."""
        self._refresh()
        return self._rows_by["thread"].get(thread_id, torch.empty(0, dtype=torch.long))

    def chunk(self, row: int) -> Chunk:
        return self.chunks[row]

    def row_of(self, chunk_id: str) -> int | None:
        self._refresh()
        return self._pos.get(chunk_id)

    # ---- persistence ---------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index folder atomically (a complete temp folder renamed into place)."""
        self._refresh()
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            save_file(
                {"vectors": self.vectors.to(torch.float16).contiguous()},
                str(tmp / "vectors.safetensors"),
                metadata={"fingerprint": self.embedding["fingerprint"], "n": str(len(self.chunks))},
            )
            self._write_sqlite(tmp / "meta.sqlite")
            if self.cfg.save_bm25:
                self._bm25.save(str(tmp / "bm25"), show_progress=False)
            if isinstance(self._dense, FaissBackend):
                self._dense.save(tmp / "dense.faiss")
            info = {
                "format": INDEX_FORMAT,
                "embedding": self.embedding,
                "n_chunks": len(self.chunks),
                "n_threads": len({c.thread_id for c in self.chunks}),
                "sites": sorted({c.site for c in self.chunks}),
                "bm25": {"k1": self.cfg.bm25_k1, "b": self.cfg.bm25_b, "stopwords": self.cfg.stopwords},
                "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            (tmp / "index.json").write_text(json.dumps(info, indent=2) + "\n")
            _swap_dir(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    def _write_sqlite(self, path: Path) -> None:
        # Post-level metadata is stored once per post (a post's chunks share it); chunk texts are
        # zlib-compressed, which keeps the shipped demo index small (read them with `chunk_text_of`).
        con = sqlite3.connect(path)
        try:
            con.executescript(
                "CREATE TABLE posts (post_id TEXT PRIMARY KEY, thread_id TEXT, kind TEXT, site TEXT,"
                " title TEXT, tags TEXT, score INTEGER, accepted INTEGER, url TEXT, date TEXT, groups TEXT)"
                " WITHOUT ROWID;"
                "CREATE TABLE chunks (row INTEGER PRIMARY KEY, post_id TEXT NOT NULL, n INTEGER NOT NULL,"
                " text_z BLOB NOT NULL);"
            )
            posts = {}
            for c in self.chunks:
                posts.setdefault(
                    c.post_id,
                    (c.post_id, c.thread_id, c.kind, c.site, c.title, json.dumps(c.tags), c.score,
                     int(c.accepted), c.url, c.date, json.dumps(c.groups)),
                )  # fmt: skip
            con.executemany("INSERT INTO posts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", posts.values())
            con.executemany(
                "INSERT INTO chunks VALUES (?, ?, ?, ?)",
                (
                    (i, c.post_id, _chunk_number(c), zlib.compress(c.text.encode("utf-8"), 9))
                    for i, c in enumerate(self.chunks)
                ),
            )
            con.commit()
        finally:
            con.close()

    @classmethod
    def load(cls, folder: str | os.PathLike, cfg: IndexConfig | None = None) -> RagIndex:
        """Open a saved index folder (checked for completeness and consistency)."""
        import bm25s

        folder = Path(folder)
        if not (folder / "index.json").is_file():
            raise RagError(
                f"{folder} is not a RAG index (index.json missing); build one with `gensys rag index`"
            )
        try:
            info = json.loads((folder / "index.json").read_text())
        except json.JSONDecodeError as e:
            raise RagError(f"{folder}/index.json is not valid JSON ({e})") from None
        if info.get("format", 0) > INDEX_FORMAT:
            raise RagError(f"{folder}: index format {info.get('format')} is newer than this gensys reads")
        cfg = cfg or IndexConfig()
        bm = info.get("bm25", {})
        if (bm.get("k1"), bm.get("b"), bm.get("stopwords")) != (cfg.bm25_k1, cfg.bm25_b, cfg.stopwords):
            bm_stale = True  # the config asks for other BM25 settings: re-index BM25 from the texts
        else:
            bm_stale = False
        index = cls(info["embedding"], cfg)
        con = sqlite3.connect(f"file:{folder / 'meta.sqlite'}?mode=ro", uri=True)
        try:
            posts = {r[0]: r for r in con.execute(f"SELECT {', '.join(_POST_COLUMNS)} FROM posts")}
            rows = con.execute("SELECT post_id, n, text_z FROM chunks ORDER BY row").fetchall()
        except sqlite3.DatabaseError as e:
            raise RagError(f"{folder}/meta.sqlite is unreadable ({e})") from None
        finally:
            con.close()
        for post_id, n, text_z in rows:
            d = dict(zip(_POST_COLUMNS, posts[post_id]))
            cid = f"{post_id}#{n}"
            d["tags"], d["groups"] = json.loads(d["tags"]), json.loads(d["groups"])
            d["accepted"] = bool(d["accepted"])
            chunk = Chunk(id=cid, text=zlib.decompress(text_z).decode("utf-8"), **d)
            index.chunks.append(chunk)
            index.hashes.append(chunk.text_hash())
        tensors = load_file(str(folder / "vectors.safetensors"))
        index.vectors = tensors["vectors"].float()
        if index.vectors.shape != (len(index.chunks), int(info["embedding"]["dim"])):
            raise RagError(
                f"{folder}: vectors {tuple(index.vectors.shape)} do not match {len(index.chunks)} chunks "
                "(an interrupted copy?); rebuild the index"
            )
        if not bm_stale and (folder / "bm25").is_dir():
            index._bm25 = bm25s.BM25.load(str(folder / "bm25"))
            index._bm25_stale = index._bm25.scores["num_docs"] != max(len(index.chunks), 1)
        if cfg.backend == "faiss":
            index._faiss_path = folder / "dense.faiss"
        return index


def _chunk_number(c: Chunk) -> int:
    # Chunk ids are "<post_id>#<n>" (ingest builds them so); the table stores n only.
    head, _, n = c.id.rpartition("#")
    if head != c.post_id or not n.isdigit():
        raise RagError(f"chunk id {c.id!r} is not '<post_id>#<n>' (post_id {c.post_id!r})")
    return int(n)


def embedder_info(embedder: Embedder) -> dict[str, Any]:
    return {"name": embedder.name, "fingerprint": embedder.fingerprint, "dim": embedder.dim}


def _swap_dir(tmp: Path, target: Path) -> None:
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
