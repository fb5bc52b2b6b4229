"""Retrieval and citation evaluation on duplicate / linked question pairs (data/rag/post_links.tsv).

Query = one question's title + body; relevant = the threads it links to or is linked from (duplicates
and "linked" both count, gain 1); the query's own thread is hidden inside retrieval (a filter applied
before top-k). Chunks are ranked, then grouped into threads by their best chunk. Metrics come from
`gensys.metrics` (Recall@k, MRR, nDCG@10), latency is wall-clock per query with the query embedding.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gensys.apps.rag.config import EvalConfig, SearchConfig
from gensys.apps.rag.embed import EmbeddingCache, embed_with_cache
from gensys.apps.rag.search import Searcher
from gensys.data.readers import iter_jsonl, read_tsv
from gensys.metrics import mrr, ndcg_at_k, recall_at_k

METHODS = ("bm25", "dense", "hybrid")


def load_labels(data_folder: Path, thread_ids: set[str]) -> list[dict[str, Any]]:
    """Queries with relevance sets: [{"thread_id", "text", "title", "relevant": set(thread ids)}]."""
    links = read_tsv(data_folder / "post_links.tsv")
    relevant: dict[str, set[str]] = {}
    for r in links:
        a = f"{r['site']}/q/{r['post_id']}"
        b = f"{r['site']}/q/{r['related_post_id']}"
        if a == b or a not in thread_ids or b not in thread_ids:
            continue
        relevant.setdefault(a, set()).add(b)
        relevant.setdefault(b, set()).add(a)  # a link is relevance both ways
    path = data_folder / "questions.jsonl.gz"
    if not path.exists():
        path = data_folder / "questions.jsonl"
    queries = []
    for q in iter_jsonl(path):
        tid = f"{q['site']}/q/{q['id']}"
        if tid in relevant:
            text = f"{q['title']}\n{q['body_text']}"
            queries.append({"thread_id": tid, "title": q["title"], "text": text, "relevant": relevant[tid]})
    queries.sort(key=lambda x: x["thread_id"])
    return queries


def thread_ranking(searcher: Searcher, hits: list[Any]) -> list[str]:
    """Thread ids in order of their best chunk."""
    seen: dict[str, None] = {}
    for h in hits:
        seen.setdefault(searcher.index.chunk(h.row).thread_id, None)
    return list(seen)


def score_rankings(ranked: list[list[str]], relevant: list[set[str]], ks: list[int]) -> dict[str, float]:
    out = {f"recall@{k}": recall_at_k(ranked, relevant, k) for k in ks}
    out["mrr"] = mrr(ranked, relevant)
    out["ndcg@10"] = ndcg_at_k(ranked, relevant, 10)
    return out


def query_vectors(searcher: Searcher, texts: list[str], cache_dir: str) -> torch.Tensor:
    """(Q, D) query embeddings, cached on disk (tuning re-runs the same queries many times)."""
    emb = searcher.embedder
    cache = EmbeddingCache(cache_dir, emb.fingerprint) if cache_dir else None
    keys = [hashlib.sha1(("query\n" + t).encode()).hexdigest() for t in texts]
    return embed_with_cache(emb, texts, keys, cache)


def rank_all(
    searcher: Searcher,
    queries: list[dict[str, Any]],
    qvecs: torch.Tensor,
    groups: list[str],
    cfg: SearchConfig,
    depth: int,
) -> list[list[str]]:
    """Thread rankings of every query under search settings `cfg`."""
    out = []
    for q, v in zip(queries, qvecs):
        hits = searcher.search(
            q["text"],
            groups=groups,
            k=depth,
            filters={"exclude_threads": [q["thread_id"]]},
            cfg=cfg,
            query_vec=v,
        )
        out.append(thread_ranking(searcher, hits))
    return out


def evaluate_methods(
    searcher: Searcher,
    queries: list[dict[str, Any]],
    qvecs: torch.Tensor,
    groups: list[str],
    ecfg: EvalConfig,
) -> dict[str, dict[str, float]]:
    """Recall@k / MRR / nDCG@10 of BM25 and dense alone (no boosts: their best setting here) and of the
    configured hybrid (fusion + boosts)."""
    relevant = [q["relevant"] for q in queries]
    results = {}
    for method in METHODS:
        cfg = replace(searcher.cfg, method=method)
        if method != "hybrid":
            cfg = replace(cfg, accepted_boost=0.0, score_boost=0.0)
        ranked = rank_all(searcher, queries, qvecs, groups, cfg, ecfg.depth)
        results[method] = score_rankings(ranked, relevant, ecfg.ks)
    return results


def latency(searcher: Searcher, texts: list[str], groups: list[str], k: int = 10) -> dict[str, float]:
    """p50 / p99 milliseconds of hybrid search, query embedding included, one query at a time; also the
    retrieval alone (embedding excluded), the CPU time per query (what an otherwise idle machine would
    take, roughly) and the machine's load average (the cores may be shared with other jobs)."""
    import os

    searcher.search(texts[0], groups=groups, k=k)  # warm-up
    total, retrieval, cpu = [], [], []
    for t in texts:
        c0 = time.process_time()
        t0 = time.perf_counter()
        qvec = searcher.embedder.encode([t])[0]
        t1 = time.perf_counter()
        searcher.search(t, groups=groups, k=k, query_vec=qvec)
        t2 = time.perf_counter()
        cpu.append(1000 * (time.process_time() - c0))
        total.append(1000 * (t2 - t0))
        retrieval.append(1000 * (t2 - t1))
    return {
        "p50_ms": float(np.percentile(total, 50)),
        "p99_ms": float(np.percentile(total, 99)),
        "retrieval_p50_ms": float(np.percentile(retrieval, 50)),
        "cpu_p50_ms": float(np.percentile(cpu, 50)),
        "n": len(total),
        "load_avg_1min": os.getloadavg()[0],
        "threads": torch.get_num_threads(),
    }


def citation_figures(predictor: Any, queries: list[dict[str, Any]], groups: list[str]) -> dict[str, float]:
    """Extractive answers: share of citations that were retrieved (must be 1) and that point at a labelled
    relevant thread (a lower bound on precision: unlabelled threads may also answer the question)."""
    n_cited = n_valid = n_relevant = 0
    index = predictor.index
    for q in queries:
        question = q["text"][: predictor.cfg.answer.max_question_chars]
        hide = {"exclude_threads": [q["thread_id"]]}
        res = predictor.ask(question, user="eval", groups=groups, mode="extractive", k=5, filters=hide)
        retrieved = {r["id"] for r in res["retrieved"]}
        for c in res["citations"]:
            n_cited += 1
            n_valid += c["id"] in retrieved
            row = index.row_of(c["id"])
            n_relevant += row is not None and index.chunk(row).thread_id in q["relevant"]
    return {
        "citations": n_cited,
        "citation_validity": n_valid / max(n_cited, 1),
        "citation_precision": n_relevant / max(n_cited, 1),
    }


def write_report(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """results.md (a table) and retrieval.png (bars per method) in `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    methods = results["methods"]
    cols = list(next(iter(methods.values())))
    lines = [
        f"queries: {results['n_queries']}, chunks: {results['n_chunks']}, search: {results['search']}",
        "(bm25 and dense alone without boosts; hybrid with the configured fusion and boosts)",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for m, vals in methods.items():
        lines.append(f"| {m} | " + " | ".join(f"{vals[c]:.4f}" for c in cols) + " |")
    if "hybrid_gain" in results:
        lines.append("")
        lines.append(
            f"hybrid nDCG@10 gain over the better single retriever: {100 * results['hybrid_gain']:+.1f}%"
        )
    for key in ("latency_title", "latency_full"):
        if key in results:
            lat = results[key]
            lines.append(
                f"{key}: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms over {lat['n']} queries "
                f"(retrieval alone p50 {lat['retrieval_p50_ms']:.1f} ms, "
                f"CPU time p50 {lat['cpu_p50_ms']:.1f} ms; {lat['threads']} threads, "
                f"load average {lat['load_avg_1min']:.1f})"
            )
    if "citations" in results:
        c = results["citations"]
        lines.append(
            f"citations: {c['citations']}, validity {c['citation_validity']:.3f}, "
            f"precision (labelled threads) {c['citation_precision']:.3f}"
        )
    md = out_dir / "results.md"
    md.write_text("\n".join(lines) + "\n")

    metrics = ["ndcg@10", "mrr", "recall@10", "recall@20"]
    metrics = [m for m in metrics if m in cols]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(methods)
    x = np.arange(len(metrics))
    for i, (m, vals) in enumerate(methods.items()):
        bars = ax.bar(x + i * width, [vals[c] for c in metrics], width, label=m)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x + width * (len(methods) - 1) / 2, metrics)
    ax.set_ylim(0, 1)
    ax.set_title(f"RAG retrieval on linked questions ({results['n_queries']} queries)")
    ax.legend()
    fig.tight_layout()
    png = out_dir / "retrieval.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return md, png
