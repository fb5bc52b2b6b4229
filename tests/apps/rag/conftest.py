"""Shared fixtures of the RAG tests: the real MiniLM encoder (installed package) and a small corpus."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rag_testdata import THREADS, write_dump  # noqa: E402

from gensys.apps.rag.config import AclConfig, IngestConfig  # noqa: E402


@pytest.fixture(scope="session")
def embedder():
    from gensys.apps.rag.embed import load_embedder

    return load_embedder()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One embedding cache for the session: each distinct text is embedded once across all tests."""
    return tmp_path_factory.mktemp("embed_cache")


@pytest.fixture(scope="session")
def corpus_chunks(tmp_path_factory):
    """Chunks of the two test sites, read from Stack Exchange XML written by the test data module."""
    from gensys.apps.rag.ingest import chunks_from_se_dump

    root = tmp_path_factory.mktemp("dumps")
    cfg = IngestConfig(chunk_chars=300, overlap_chars=60)
    acl = AclConfig(site_groups={"beta.example.com": ["physics"]}, tag_groups={"wallet": ["support"]})
    chunks = []
    for site in ("alpha.example.com", "beta.example.com"):
        chunks += chunks_from_se_dump(write_dump(root / site, site), cfg, acl)
    return chunks


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A random decoder LM checkpoint with a chat-role tokenizer (the shape of models/chat)."""
    import torch

    from gensys.checkpoint import save_checkpoint
    from gensys.data.tokenizer import train_bpe
    from gensys.models import build_model

    texts = [t[4] for t in THREADS] * 20 + ["Question: what? Answer: this [1]."] * 20
    tok = train_bpe(texts, vocab_size=400)
    torch.manual_seed(0)
    cfg = {
        "vocab_size": tok.vocab_size,
        "d_model": 32,
        "n_layers": 1,
        "n_heads": 2,
        "d_ff": 64,
        "max_seq_len": 2048,
    }
    model = build_model("decoder_lm", cfg)
    path = tmp_path_factory.mktemp("chat") / "ckpt"
    save_checkpoint(path, model, {"family": "decoder_lm", "model": cfg}, tokenizer=tok)
    return path
