"""Tiny decoder LMs and token data shared by the training tests (and the torchrun worker)."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import tempfile
import time
import traceback
from pathlib import Path

import torch

from gensys.models.decoder_lm import DecoderLM, gpt2_config, llama_config
from gensys.train import IGNORE_INDEX, ParallelConfig, TrainConfig, destroy_distributed

VOCAB = 64
SEQ = 16


def tiny_llama(seed: int = 0, n_layers: int = 2, dropout: float = 0.0) -> DecoderLM:
    """2 blocks, d=32, 4 query heads sharing 2 K/V heads (GQA), SwiGLU, untied: every TP/PP path applies."""
    torch.manual_seed(seed)
    cfg = llama_config(
        vocab_size=VOCAB, d_model=32, n_layers=n_layers, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64
    )
    cfg.dropout = dropout
    return DecoderLM(cfg)


def tiny_gpt2(seed: int = 0, dropout: float = 0.0) -> DecoderLM:
    """GPT-2 style (learned positions, LayerNorm, biases, tied embeddings)."""
    torch.manual_seed(seed)
    return DecoderLM(
        gpt2_config(
            vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, dropout=dropout
        )
    )


def token_data(n: int = 48, seed: int = 0, mask_prob: float = 0.3) -> list[dict[str, torch.Tensor]]:
    """Random sequences whose labels are next tokens, with a random share hidden (-100).

    The hidden share differs between examples, so batches carry different numbers of target tokens: a loss
    normalised per micro-batch or per rank instead of per token would show up in the parity tests.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        seq = torch.randint(0, VOCAB, (SEQ + 1,), generator=g)
        labels = seq[1:].clone()
        labels[torch.rand(SEQ, generator=g) < mask_prob] = IGNORE_INDEX
        labels[-1] = seq[-1]  # at least one target per example
        out.append({"input_ids": seq[:-1], "labels": labels})
    return out


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def small_cfg(out_dir: str, mode: str = "none", **kw) -> TrainConfig:
    """A few fast steps with warmup, cosine decay, clipping and accumulation all active."""
    par = {k[len("par_") :]: kw.pop(k) for k in list(kw) if k.startswith("par_")}
    base = dict(
        lr=1e-2,
        warmup_steps=1,
        max_steps=3,
        grad_accum_steps=2,
        grad_clip=0.5,
        weight_decay=0.1,
        log_every=1,
        out_dir=out_dir,
        progress=False,
        plot=False,
        parallel=ParallelConfig(mode=mode, **par),
    )
    base.update(kw)
    return TrainConfig(**base)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(fn, rank: int, world: int, port: int, args: tuple, err_path: str) -> None:
    # The env:// variables torchrun would set, so `init_distributed` takes its torchrun path.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    code = 0
    try:
        fn(*args)
    except BaseException:
        with open(err_path, "w") as f:
            f.write(traceback.format_exc())
        code = 1
    finally:
        destroy_distributed()
    os._exit(code)  # skip the parent's (pytest's) exit handlers inherited through fork


def run_ranks(fn, world: int, *args, timeout: float = 120.0) -> None:
    """Run `fn(*args)` on `world` gloo ranks forked from this process; re-raise any rank's failure.

    Forking (not spawning, not torchrun) reuses the already imported torch: a 2-rank test starts in well under
    a second instead of ~10 s of imports on 2 cores. Children run single-threaded, so no OpenMP pool is used
    across the fork. The torchrun path itself is covered by the example test.
    """
    ctx = mp.get_context("fork")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="gensys_ranks_")
    errs = [os.path.join(tmp, f"rank{r}.err") for r in range(world)]
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world, port, args, errs[r])) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join()
    messages = [Path(e).read_text() for e in errs if os.path.exists(e)]
    if hung or any(p.exitcode != 0 for p in procs):
        detail = "\n".join(messages) or f"exit codes {[p.exitcode for p in procs]}"
        raise AssertionError(f"distributed run failed (hung ranks: {hung}):\n{detail}")
