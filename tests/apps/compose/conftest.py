"""Shared fixtures of the compose tests: a tiny tokenizer and model built from a few AESLC emails."""

from __future__ import annotations

import pytest
import torch

from gensys.apps.compose.data import SPECIALS, clean_text, read_split
from gensys.data.readers import data_path
from gensys.data.tokenizer import Tokenizer, train_bpe
from gensys.models.decoder_lm import DecoderLM, DecoderLMConfig


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Single-request decoding of tiny matrices: one intra-op thread is faster and immune to busy CPUs.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def emails():
    return read_split(data_path("compose/aeslc_train.jsonl.gz"), min_words=3, limit=120)


@pytest.fixture(scope="session")
def tiny_tok(emails) -> Tokenizer:
    texts = [clean_text(e.body) for e in emails] + [e.subject for e in emails]
    return train_bpe(texts, 600, special_tokens=SPECIALS)


def make_model(vocab: int, pos: str = "learned", seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    cfg = DecoderLMConfig(
        vocab_size=vocab, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=256, pos=pos,
        norm="layernorm", activation="gelu", attn_bias=True, mlp_bias=True, tie_embeddings=True,
        init_std=0.3,  # peaked random distributions: no near-ties for float noise to flip
    )  # fmt: skip
    return DecoderLM(cfg).eval()


@pytest.fixture(scope="session")
def model_factory():
    return make_model


@pytest.fixture(scope="session")
def tiny_model(tiny_tok) -> DecoderLM:
    return make_model(tiny_tok.vocab_size)
