"""`gensys rag prepare|index|search|ask|eval|predict|train`: the RAG system's command-line recipes.

    gensys rag prepare --config configs/rag/demo.yaml          # threads + docs -> runs/rag/chunks.jsonl.gz
    gensys rag index   --config configs/rag/demo.yaml          # build or update the index (models/rag)
    gensys rag index   --index models/rag --add ./handbook/    # add documents / a dump / chunks incrementally
    gensys rag index   --index models/rag --delete cardano.stackexchange.com/a/12
    gensys rag search  "mint a native token" --groups everyone
    gensys rag ask     "How do I mint a native token?" --groups everyone --mode extractive
    gensys rag eval    --config configs/rag/demo.yaml          # Recall@k, MRR, nDCG@10, latency, citations

Each function takes argv and returns an exit code; user errors raise `GensysError` (one line, exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from gensys.apps.rag.config import Config, RagError
from gensys.config import load_config, to_dict


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"gensys rag {prog}", description=description, formatter_class=_Formatter
    )
    p.add_argument(
        "--config", default=None, help="YAML config (configs/rag/*.yaml); default: built-in defaults"
    )
    p.add_argument("--data-dir", default=None, help="data folder (default: $GENSYS_DATA or the repo's data/)")
    return p


def _split(args: argparse.Namespace, extra: list[str]) -> list[str]:
    bad = [a for a in extra if "=" not in a or a.startswith("-")]
    if bad:
        raise RagError(f"unrecognised arguments: {' '.join(bad)} (overrides look like key.sub=value)")
    return extra


def _config(args: argparse.Namespace, overrides: list[str]) -> Config:
    return load_config(Config, args.config, overrides)


def _embedder(cfg: Config) -> Any:
    from gensys.apps.rag.embed import load_embedder

    if cfg.embed.threads:
        import torch

        torch.set_num_threads(cfg.embed.threads)
    return load_embedder(cfg.embed.path, cfg.embed.max_tokens, cfg.embed.batch_size)


# ---------------------------------------------------------------------------------------------------------


def prepare_main(argv: list[str]) -> int:
    """Ingest the configured corpus (JSONL threads, SE dumps, documents) into chunks."""
    from gensys.apps.rag.ingest import build_chunks, save_chunks

    p = _parser("prepare", "Ingest Stack Exchange threads and documents into chunks (gzipped JSONL).")
    p.add_argument("--out", default=None, help="output file (default: ingest.out)")
    args, extra = p.parse_known_args(argv)
    cfg = _config(args, _split(args, extra))
    t0 = time.perf_counter()
    chunks = build_chunks(cfg.ingest, cfg.acl, args.data_dir)
    out = save_chunks(chunks, args.out or cfg.ingest.out)
    by: dict[str, int] = {}
    for c in chunks:
        by[f"{c.site} {c.kind}"] = by.get(f"{c.site} {c.kind}", 0) + 1
    for key, n in sorted(by.items()):
        print(f"  {key}: {n}")
    print(f"{len(chunks)} chunks -> {out} ({time.perf_counter() - t0:.1f}s)")
    return 0


def _extra_chunks(paths: list[str], cfg: Config) -> list[Any]:
    """Chunks of --add sources: a chunks .jsonl(.gz), a Stack Exchange dump folder, or documents."""
    from gensys.apps.rag.ingest import (
        chunks_from_document,
        chunks_from_se_dump,
        iter_document_paths,
        load_chunks,
    )

    out = []
    docs = []
    for p in map(Path, paths):
        if p.is_dir() and (p / "Posts.xml").is_file():
            out.extend(chunks_from_se_dump(p, cfg.ingest, cfg.acl))
        elif p.is_file() and (p.name.endswith(".jsonl") or p.name.endswith(".jsonl.gz")):
            out.extend(load_chunks(p))
        else:
            docs.append(p)
    for f, root in iter_document_paths(docs):
        out.extend(chunks_from_document(f, cfg.ingest, cfg.acl, root))
    return out


def index_main(argv: list[str]) -> int:
    """Build the index, or update an existing one incrementally (only new or changed texts are embedded)."""
    from gensys.apps.rag.embed import EmbeddingCache
    from gensys.apps.rag.index import RagIndex
    from gensys.apps.rag.ingest import build_chunks, load_chunks

    p = _parser("index", __doc__.split("\n\n")[0] if __doc__ else "")
    p.description = "Build or update the hybrid (dense + BM25) index."
    p.add_argument("--index", default=None, help="index folder (default: index.dir)")
    p.add_argument(
        "--chunks", default=None, help="chunks file from `prepare` (default: ingest the corpus now)"
    )
    p.add_argument("--add", nargs="+", default=None, metavar="PATH", help="add/update only these sources")
    p.add_argument("--delete", nargs="+", default=None, metavar="POST_ID", help="delete posts or threads")
    p.add_argument("--rebuild", action="store_true", help="ignore an existing index and build from scratch")
    args, extra = p.parse_known_args(argv)
    cfg = _config(args, _split(args, extra))
    folder = Path(args.index or cfg.index.dir)
    t0 = time.perf_counter()
    exists = (folder / "index.json").is_file() and not args.rebuild
    if (args.add or args.delete) and not exists:
        raise RagError(f"no index at {folder} to update; build it first with `gensys rag index`")
    embedder = _embedder(cfg) if not (args.delete and not args.add) else None
    index = RagIndex.load(folder, cfg.index) if exists else None
    cache = EmbeddingCache(cfg.embed.cache, embedder.fingerprint) if embedder and cfg.embed.cache else None
    if args.add or args.delete:
        assert index is not None
        if args.delete:
            print(f"deleted {index.delete_posts(args.delete)} chunks")
        if args.add:
            print("upsert:", index.upsert(_extra_chunks(args.add, cfg), embedder, cache, progress=True))
    else:
        if args.chunks:
            chunks = load_chunks(args.chunks)
        else:
            chunks = build_chunks(cfg.ingest, cfg.acl, args.data_dir)
        if index is None:
            index = RagIndex.build(chunks, embedder, cfg.index, cache, progress=True)
            print(f"built {len(index)} chunks")
        else:
            # Sync the index with the corpus: drop posts that are gone, upsert the rest (unchanged texts are
            # reused by hash, so only new or edited posts are embedded).
            keep = {c.post_id for c in chunks}
            gone = {c.post_id for c in index.chunks} - keep
            print(f"deleted {index.delete_posts(gone)} chunks of {len(gone)} removed posts")
            print("upsert:", index.upsert(chunks, embedder, cache, progress=True))
    index.save(folder)
    (folder / "config.json").write_text(
        json.dumps(to_dict(replace(cfg, index=replace(cfg.index, dir=str(folder)))), indent=2) + "\n"
    )
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"index: {len(index)} chunks -> {folder} ({size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f}s)")
    return 0


def _query_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = _parser(prog, description)
    p.add_argument("query", nargs="?", default=None, help="the text (default: read stdin)")
    p.add_argument(
        "--index", default=None, help="index folder (default: index.dir of --config, else models/rag)"
    )
    p.add_argument("--user", default="cli", help="who asks (recorded, not trusted for access)")
    p.add_argument("--groups", default="everyone", help="comma-separated access groups of the user")
    p.add_argument("-k", type=int, default=5, help="chunks to retrieve")
    p.add_argument("--site", default=None, help="filter: only this site (comma-separated for several)")
    p.add_argument("--tags", default=None, help="filter: any of these tags (comma-separated)")
    p.add_argument("--date-from", default=None, help="filter: posts created on or after (ISO date)")
    p.add_argument("--date-to", default=None, help="filter: posts created on or before (ISO date)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def _predictor_and_query(args: argparse.Namespace, overrides: list[str]) -> tuple[Any, str, dict[str, Any]]:
    from gensys.apps.rag.predictor import load_config_file, load_predictor

    if args.config:
        cfg = _config(args, overrides)
        folder = Path(args.index or cfg.index.dir)
    else:
        folder = Path(args.index or "models/rag")
        if not folder.is_dir():
            raise RagError(
                f"no index at {folder}; build one with `gensys rag index --config configs/rag/demo.yaml`"
            )
        cfg = load_config_file(folder)
        if overrides:
            from gensys.config import apply_overrides, from_dict

            cfg = from_dict(Config, apply_overrides(to_dict(cfg), overrides), source="overrides")
    query = args.query if args.query is not None else sys.stdin.read()
    filters: dict[str, Any] = {}
    if args.site:
        filters["site"] = args.site.split(",")
    if args.tags:
        filters["tags"] = args.tags.split(",")
    if args.date_from:
        filters["date_from"] = args.date_from
    if args.date_to:
        filters["date_to"] = args.date_to
    return load_predictor(folder, cfg=cfg), query, filters


def _groups(value: str) -> list[str]:
    return [g.strip() for g in value.split(",") if g.strip()]


def search_main(argv: list[str]) -> int:
    """Retrieve chunks for a query as a user with groups."""
    p = _query_parser("search", "Retrieve chunks for a query as a user with groups (hybrid by default).")
    p.add_argument(
        "--method", choices=["hybrid", "bm25", "dense"], default=None, help="override search.method"
    )
    args, extra = p.parse_known_args(argv)
    pred, query, filters = _predictor_and_query(args, _split(args, extra))
    t0 = time.perf_counter()
    hits = pred.search(
        query, user=args.user, groups=_groups(args.groups), k=args.k, filters=filters, method=args.method
    )
    ms = 1000 * (time.perf_counter() - t0)
    if args.json:
        print(json.dumps({"hits": hits, "latency_ms": round(ms, 1)}, ensure_ascii=False, indent=2))
        return 0
    for i, h in enumerate(hits, 1):
        flag = " ✓" if h["accepted"] else ""
        print(
            f"{i:2d}. [{h['score']:.4f}] {h['title']}  ({h['kind']}, {h['votes']} votes{flag})\n"
            f"    {h['url']}"
        )
        print("    " + h["snippet"].replace("\n", " ")[:200])
    print(f"({len(hits)} results in {ms:.0f} ms)")
    return 0


def ask_main(argv: list[str]) -> int:
    """Answer a question with numbered citations of the retrieved chunks."""
    p = _query_parser("ask", "Answer a question from the chunks the user may read, with citations.")
    p.add_argument("--mode", choices=["extractive", "generative"], default=None, help="default: answer.mode")
    args, extra = p.parse_known_args(argv)
    pred, query, filters = _predictor_and_query(args, _split(args, extra))
    res = pred.ask(
        query, user=args.user, groups=_groups(args.groups), mode=args.mode, k=args.k, filters=filters
    )
    if args.json:
        print(json.dumps(res, ensure_ascii=False, indent=2))
        return 0
    print(res["answer"])
    print()
    for c in res["citations"]:
        print(f"[{c['n']}] {c['title']} — {c['url']}")
    note = res.get("note") or res.get("fallback")
    print(f"({res['mode']}, {res['latency_ms']:.0f} ms{', ' + note if note else ''})")
    return 0


def predict_main(argv: list[str]) -> int:
    """Batch `ask`: JSONL requests {"question", "user", "groups", "mode"?, "k"?} in, JSONL answers out."""
    from gensys.apps.rag.predictor import load_predictor
    from gensys.data.readers import iter_jsonl

    p = _parser("predict", "Answer a JSONL file of requests (one JSON object per line) and print JSONL.")
    p.add_argument("input", help='JSONL with {"question", "user", "groups", "mode"?, "k"?, "filters"?}')
    p.add_argument("--index", default="models/rag", help="index folder")
    args, extra = p.parse_known_args(argv)
    pred = load_predictor(args.index, **dict(o.split("=", 1) for o in _split(args, extra)))
    for req in iter_jsonl(args.input):
        if "question" not in req:
            raise RagError(f"{args.input}: a request lacks 'question'")
        req.setdefault("user", "batch")
        req.setdefault("groups", ["everyone"])
        print(json.dumps(pred.ask_batch([req])[0], ensure_ascii=False), flush=True)
    return 0


def train_main(argv: list[str]) -> int:
    """RAG trains nothing: it uses the pretrained MiniLM encoder and the chat model."""
    print(
        "gensys rag has no training step: the dense encoder is the pretrained all-MiniLM-L6-v2 and "
        "answers come from the chat model (gensys chat train) or are extractive.\nBuild the index instead: "
        "gensys rag index --config configs/rag/demo.yaml"
    )
    return 0


def eval_main(argv: list[str]) -> int:
    """Recall@k, MRR, nDCG@10 (BM25, dense, hybrid), citation precision and latency; a table and a PNG."""
    import torch

    from gensys.apps.rag import evaluate as ev
    from gensys.apps.rag.predictor import load_predictor
    from gensys.data.readers import data_dir

    p = _parser("eval", "Evaluate retrieval on the linked-question labels of data/rag/post_links.tsv.")
    p.add_argument("--index", default=None, help="index folder (default: index.dir)")
    p.add_argument("--out", default=None, help="output folder (default: eval.out_dir)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    args, extra = p.parse_known_args(argv)
    cfg = _config(args, _split(args, extra))
    folder = Path(args.index or cfg.index.dir)
    pred = load_predictor(folder, cfg=cfg)
    searcher = pred.searcher
    data_folder = Path(cfg.ingest.data_dir) if cfg.ingest.data_dir else data_dir(args.data_dir) / "rag"
    threads = {c.thread_id for c in searcher.index.chunks}
    queries = ev.load_labels(data_folder, threads)
    if cfg.eval.max_queries:
        queries = queries[: cfg.eval.max_queries]
    if not queries:
        raise RagError(
            f"no labelled queries: no post_links.tsv pair has both questions in the index {folder}"
        )
    groups = sorted({g for c in searcher.index.chunks for g in c.groups})  # an admin sees everything
    print(f"{len(queries)} queries, {len(searcher.index)} chunks; embedding queries", flush=True)
    qvecs = ev.query_vectors(searcher, [q["text"] for q in queries], cfg.embed.cache)
    methods = ev.evaluate_methods(searcher, queries, qvecs, groups, cfg.eval)
    best_single = max(methods["bm25"]["ndcg@10"], methods["dense"]["ndcg@10"])
    results: dict[str, Any] = {
        "n_queries": len(queries),
        "n_chunks": len(searcher.index),
        "search": {k: v for k, v in to_dict(cfg.search).items() if k != "k"},
        "methods": methods,
        "hybrid_gain": methods["hybrid"]["ndcg@10"] / best_single - 1 if best_single > 0 else 0.0,
        "threads": torch.get_num_threads(),
    }
    if not args.no_latency and cfg.eval.latency_queries:
        n = cfg.eval.latency_queries
        results["latency_title"] = ev.latency(searcher, [q["title"] for q in queries][:n], groups)
        results["latency_full"] = ev.latency(searcher, [q["text"][:2000] for q in queries][:n], groups)
    if cfg.eval.citation_queries:
        results["citations"] = ev.citation_figures(pred, queries[: cfg.eval.citation_queries], groups)
    md, png = ev.write_report(results, Path(args.out or cfg.eval.out_dir))
    print(md.read_text())
    print(f"-> {md}, {png}")
    return 0
