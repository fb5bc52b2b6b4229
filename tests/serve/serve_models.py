"""Tiny random-init checkpoints of every served family, saved in the one checkpoint format.

They test the serving layer (routing, batching, limits, pages), not model quality: weights are random, so
outputs are arbitrary text; the tests check shapes, types and plumbing, never wording.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from gensys.checkpoint import save_checkpoint
from gensys.data.tokenizer import Tokenizer, train_bpe

CORPUS = [
    "Thanks for the update. Please let me know if you have any questions.",
    "A man is riding a bicycle down the street.",
    "Ein Mann fährt mit dem Fahrrad die Straße entlang.",
    "Two dogs are playing in the grass near a lake.",
    "How do I mint a native token on the test network?",
    "See you at the meeting tomorrow morning.",
] * 20


def tiny_tokenizer() -> Tokenizer:
    return train_bpe(CORPUS, vocab_size=500)


def save_decoder_lm(out: Path, tok: Tokenizer, extra: dict | None = None, seed: int = 0) -> Path:
    from gensys.models.decoder_lm import DecoderLM, DecoderLMConfig

    torch.manual_seed(seed)
    cfg = DecoderLMConfig(
        vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=512
    )
    return save_checkpoint(
        out, DecoderLM(cfg), {"family": "decoder_lm", "model": asdict(cfg), **(extra or {})}, tok
    )


def save_seq2seq(out: Path, tok: Tokenizer, seed: int = 0) -> Path:
    from gensys.models.seq2seq import Seq2Seq, Seq2SeqConfig

    torch.manual_seed(seed)
    cfg = Seq2SeqConfig(
        vocab_size=tok.vocab_size, d_model=32, n_heads=2, d_ff=64, n_enc_layers=1, n_dec_layers=1, dropout=0.0
    )
    extra = {"translate": {"src_lang": "en", "tgt_lang": "de", "max_len": 32, "decode": {"max_len_b": 6}}}
    return save_checkpoint(out, Seq2Seq(cfg), {"family": "seq2seq", "model": asdict(cfg), **extra}, tok)


def save_captioner(out: Path, tok: Tokenizer, seed: int = 0) -> Path:
    from gensys.models.captioner import Captioner, CaptionerConfig

    torch.manual_seed(seed)
    cfg = CaptionerConfig(
        vocab_size=tok.vocab_size, encoder="vit", image_size=32, patch_size=16, enc_d_model=32, enc_layers=1,
        enc_heads=2, enc_d_ff=64, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=16, dropout=0.0,
    )  # fmt: skip
    extra = {"caption": {"decode": {"max_new_tokens": 8}}}
    return save_checkpoint(out, Captioner(cfg), {"family": "captioner", "model": asdict(cfg), **extra}, tok)


# The tiny LMs are fitted for a few seconds to a handful of texts, so that pages show readable output
# (greedy decoding then reproduces them); that is all these weights are for.
EMAILS = [
    ("Q3 budget", "Thanks for the update. Please let me know if you have any questions."),
    ("Meeting", "See you at the meeting tomorrow morning."),
]
CHATS = [
    ("hello", "Hello! How can I help you today?"),
    ("what is gensys?", "A small PyTorch stack for five systems."),
]


def overfit_lm(model: torch.nn.Module, rows: list[tuple[list[int], int]], pad: int, steps: int = 150) -> None:
    """Fit `model` to token rows (ids, number of leading context tokens without loss)."""
    from gensys.data.batching import IGNORE_INDEX
    from gensys.train.losses import lm_loss

    t = max(len(r) for r, _ in rows) - 1
    ids = torch.full((len(rows), t), pad, dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), t), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for i, (r, ctx) in enumerate(rows):
        ids[i, : len(r) - 1] = torch.tensor(r[:-1])
        labels[i, ctx - 1 : len(r) - 1] = torch.tensor(r[ctx:])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss_sum, n, _ = lm_loss(model, {"input_ids": ids, "labels": labels})
        loss = loss_sum / n
        if loss.item() < 0.01:  # memorised: greedy decoding now reproduces the texts
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def save_fitted_lm(out: Path, tok: Tokenizer, rows: list[tuple[list[int], int]], seed: int = 0) -> Path:
    from gensys.models.decoder_lm import DecoderLM, DecoderLMConfig

    torch.manual_seed(seed)
    cfg = DecoderLMConfig(
        vocab_size=tok.vocab_size, d_model=48, n_layers=2, n_heads=2, d_ff=96, max_seq_len=512
    )
    model = DecoderLM(cfg)
    overfit_lm(model, rows, tok.pad_id)
    return save_checkpoint(out, model, {"family": "decoder_lm", "model": asdict(cfg)}, tok)


def compose_rows(tok: Tokenizer) -> list[tuple[list[int], int]]:
    from gensys.apps.compose.data import context_ids

    rows = []
    for subject, body in EMAILS:
        ctx = context_ids(tok, subject, "", 24, 64)
        rows.append((ctx + tok.encode(body) + [tok.eos_id], len(ctx)))
    return rows


def chat_rows(tok: Tokenizer) -> list[tuple[list[int], int]]:
    """Chat examples laid out as the chat pipeline prompts them (its enhancer adds the system prompt)."""
    from gensys.apps.chat.enhancer import EnhancerConfig, PromptEnhancer
    from gensys.apps.chat.template import render_prompt

    enhancer = PromptEnhancer(EnhancerConfig(), None)
    rows = []
    for question, answer in CHATS:
        messages = enhancer.enhance([{"role": "user", "content": question}]).messages
        ctx = render_prompt(tok, messages)
        rows.append((ctx + tok.encode(answer) + [tok.special_id("end")], len(ctx)))
    return rows


def save_safety(out: Path, refuse: bool) -> Path:
    """An n-gram safety classifier whose bias makes every text safe (or, with `refuse`, unsafe)."""
    from gensys.apps.chat.safety import BLOCKING, CATEGORIES, NgramClassifier, NgramModelConfig

    cfg = NgramModelConfig(buckets=256)
    model = NgramClassifier(cfg)
    with torch.no_grad():
        model.bias.fill_(6.0 if refuse else -6.0)
    info = {"categories": list(CATEGORIES), "block": list(BLOCKING), "thresholds": {}, "max_len": 64}
    return save_checkpoint(out, model, {"kind": "ngram", "model": asdict(cfg), "safety": info})


def save_chat_dir(out: Path, policy: Path, refuse: bool = False) -> Path:
    """models/chat layout: policy/ (a copy of a decoder-LM checkpoint) and safety/."""
    import shutil

    shutil.copytree(policy, out / "policy")
    save_safety(out / "safety", refuse)
    return out


DOCS = [
    ("Minting tokens", "To mint a native token, run the mint command with a policy script.", ["everyone"]),
    ("Wallet backups", "Back up the wallet seed phrase offline and never share it.", ["everyone"]),
    ("Staff rota", "The on-call rota for staff is in the private handbook.", ["staff"]),
]


def save_rag_index(out: Path) -> Path:
    """A three-document index (one readable only by group "staff") with the real MiniLM encoder."""
    from gensys.apps.rag.embed import Embedder
    from gensys.apps.rag.index import RagIndex
    from gensys.apps.rag.ingest import Chunk

    chunks = [
        Chunk(
            id=f"docs/d/{i}#0", post_id=f"docs/d/{i}", thread_id=f"docs/d/{i}", kind="doc", site="docs",
            title=title, text=text, url=f"https://docs.example.com/{i}", groups=groups,
        )
        for i, (title, text, groups) in enumerate(DOCS)
    ]  # fmt: skip
    return RagIndex.build(chunks, Embedder()).save(out)
