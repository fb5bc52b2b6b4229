"""Stage 1, pretraining: next-token prediction on packed documents, held-out WikiText-2 test perplexity.

Documents (Shakespeare, WikiText-2 valid, AESLC emails, Stack Exchange posts, Multi30k English) are tokenised,
each followed by <eos>, and packed into rows of `pretrain.seq_len` tokens (`gensys.data.batching
.pack_documents`). Labels never cross a document boundary (the token after <eos> is not predicted from the
previous document); attention is plain causal over the row, as in GPT-2/3 pretraining: the model learns
that what precedes an <eos> is unrelated context (SFT, where contamination matters, packs with a
block-diagonal mask instead).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch

from gensys.apps.chat.common import last_value, load_lm, log, mark_done, stage_dir, stage_train_config
from gensys.apps.chat.config import Config
from gensys.apps.chat.data import pretrain_documents, wikitext_test
from gensys.data.atomic import atomic_write_text
from gensys.data.batching import PackedBatch, pack_documents
from gensys.data.tokenizer import Tokenizer
from gensys.metrics.perplexity import PerplexityAccumulator, perplexity
from gensys.models.decoder_lm import DecoderLM
from gensys.train import ResumableLoader, Trainer, lm_eval_fn, seed_everything


class PackedRows:
    """Indexable view of a PackedBatch: item i = {"input_ids": (T,), "labels": (T,)}."""

    def __init__(self, packed: PackedBatch) -> None:
        self.packed = packed

    def __len__(self) -> int:
        return self.packed.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.packed.input_ids[i], "labels": self.packed.labels[i]}


def stack(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def pack(tok: Tokenizer, docs: list[str], seq_len: int) -> PackedBatch:
    """Tokenise documents and pack them (<eos> after each) into (N, seq_len) rows."""
    return pack_documents(tok.encode_batch(docs), seq_len, tok.pad_id, tok.eos_id, split_docs=True)


@torch.no_grad()
def wikitext_perplexity(
    model: DecoderLM, tok: Tokenizer, articles: list[str], seq_len: int, max_tokens: int = 0
) -> dict[str, float]:
    """Held-out perplexity on WikiText-2 test: per BPE token, and per word (whitespace-separated, so it can be
    compared across tokenisers). Articles are scored whole, in order, until `max_tokens` (0 = all) is reached;
    each is followed by <eos> and the stream is cut into non-overlapping windows of `seq_len`."""
    model.eval()
    device = next(model.parameters()).device
    stream: list[int] = []
    n_words = 0
    for art, ids in zip(articles, tok.encode_batch(articles)):
        if max_tokens and stream and len(stream) + len(ids) > max_tokens:
            break
        stream += [*ids, tok.eos_id]
        n_words += len(art.split()) + 1  # + the <eos> that ends the article
    acc = PerplexityAccumulator()
    for s in range(0, len(stream) - 1, seq_len):
        window = torch.tensor(stream[s : s + seq_len + 1], device=device)
        logits = model(window[None, :-1])  # (1, T, V)
        acc.add_logits(logits, window[None, 1:])
    return {
        "wikitext2_test_ppl": acc.value,
        "wikitext2_test_word_ppl": perplexity(acc.total_nll, n_words),
        "wikitext2_test_tokens": acc.n_tokens,
        "wikitext2_test_words": n_words,
    }


def run(cfg: Config, tok: Tokenizer) -> dict[str, Any]:
    """Train the base LM; returns (and writes to done.json) its figures."""
    pc = cfg.pretrain
    tcfg = stage_train_config(cfg, "pretrain", pc.train)
    train_docs, val_docs = pretrain_documents(cfg.data, cfg.seed)
    train = pack(tok, train_docs, pc.seq_len)
    val = pack(tok, val_docs or train_docs[:1], pc.seq_len)
    n_tokens = int(train.loss_mask.sum())
    log(
        f"pretrain: {len(train_docs)} documents, {n_tokens:,} training tokens in {len(PackedRows(train))} "
        f"rows of {pc.seq_len}; {int(val.loss_mask.sum()):,} validation tokens"
    )
    seed_everything(cfg.seed)
    if pc.init_from:
        model, _ = load_lm(pc.init_from)
    else:
        model = DecoderLM(dataclasses.replace(cfg.model, vocab_size=tok.vocab_size))
    loader = ResumableLoader(PackedRows(train), tcfg.micro_batch_size, stack, seed=cfg.seed)
    eval_fn = lm_eval_fn(PackedRows(val), tcfg.micro_batch_size, stack, max_batches=tcfg.eval_steps)
    trainer = Trainer(model, tcfg, train_data=loader, eval_fn=eval_fn, tokenizer=tok)
    summary = trainer.fit()
    model = trainer.model
    tokens_seen = trainer.step * tcfg.grad_accum_steps * tcfg.micro_batch_size * pc.seq_len
    articles = wikitext_test(cfg.data)
    figures = wikitext_perplexity(model, tok, articles, pc.seq_len, cfg.data.wikitext_eval_tokens)
    figures.update(
        {
            "steps": trainer.step,
            "train_tokens_available": n_tokens,
            "epochs": round(tokens_seen / max(n_tokens, 1), 3),
            "final_train_loss": summary["loss"],
            "val_ppl": last_value(summary["metrics"], "val_ppl"),
        }
    )
    atomic_write_text(stage_dir(cfg, "pretrain") / "eval.json", json.dumps(figures, indent=2) + "\n")
    log(
        "pretrain: WikiText-2 test ppl {:.1f} per token, {:.1f} per word".format(
            figures["wikitext2_test_ppl"], figures["wikitext2_test_word_ppl"]
        )
    )
    mark_done(cfg, "pretrain", figures)
    return figures
