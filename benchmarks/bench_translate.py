"""Translate speed figures: training throughput of a config (and the CPU time its steps imply), and decoding
speed of a checkpoint, batched against one sentence at a time (a ratio measured in the same run).

    python benchmarks/bench_translate.py train --config configs/translate/quality.yaml --threads 2
    python benchmarks/bench_translate.py decode --ckpt models/translate --sentences 64 --beam 5

`train` times forward + backward + clipping + AdamW on real Multi30k batches of the config's token budget and
prints target tokens/s and the estimated training time of `pretrain.steps + train.max_steps` (evaluation and
start-up not included). This is how configs/translate/{demo,quality}.yaml were sized.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gensys.apps.translate.config import Config  # noqa: E402
from gensys.apps.translate.data import TokenBatchLoader, collate_pairs, encode_pairs, read_pairs  # noqa: E402
from gensys.apps.translate.predictor import load_predictor  # noqa: E402
from gensys.apps.translate.recipe import seq2seq_loss  # noqa: E402
from gensys.config import load_config  # noqa: E402
from gensys.data.tokenizer import Tokenizer, train_bpe  # noqa: E402
from gensys.models.seq2seq import Seq2Seq  # noqa: E402


def bench_train(a: argparse.Namespace) -> dict:
    cfg = load_config(Config, a.config, a.overrides)
    pairs = read_pairs(cfg.data, "train", a.pairs)
    if cfg.tokenizer.path:
        tok = Tokenizer.load(cfg.tokenizer.path)
    else:  # the joint BPE of the sample: sentence lengths (and so batch shapes) are what the run sees
        tok = train_bpe([s for s, _ in pairs] + [t for _, t in pairs], cfg.tokenizer.vocab_size)
    data = encode_pairs(tok, pairs, cfg.data.max_len)
    loader = TokenBatchLoader(
        data, cfg.data.tokens_per_batch, lambda it, g: collate_pairs(it, tok.pad_id, tok.bos_id), seed=0
    )
    torch.manual_seed(0)
    model = Seq2Seq(dataclasses.replace(cfg.model, vocab_size=cfg.tokenizer.vocab_size)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times, toks = [], []
    for _ in range(a.steps + a.warmup):
        batch = next(loader)
        t0 = time.perf_counter()
        loss_sum, n, _ = seq2seq_loss(model, batch, label_smoothing=cfg.train.label_smoothing)
        (loss_sum / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        toks.append(int(n))
    step_s = sum(times[a.warmup :]) / a.steps
    tok_s = sum(toks[a.warmup :]) / sum(times[a.warmup :])
    steps = cfg.pretrain.steps + cfg.train.max_steps
    return {
        "config": a.config,
        "threads": torch.get_num_threads(),
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "target_tokens_per_step": round(sum(toks) / len(toks)),
        "step_s": round(step_s, 3),
        "target_tok_per_s": round(tok_s),
        "steps": steps,
        "est_train_min": round(steps * step_s / 60, 1),
    }


def bench_decode(a: argparse.Namespace) -> dict:
    tr = load_predictor(a.ckpt)
    cfg = load_config(Config, None, [f"data.pair={tr.src_lang}-{tr.tgt_lang}"])
    sources = [s for s, _ in read_pairs(cfg.data, "test_2016_flickr", a.sentences)]
    tr.translate(sources[:4], beam=a.beam)  # warm-up
    t0 = time.perf_counter()
    batched = tr.translate(sources, beam=a.beam, batch_size=a.batch_size)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [tr.translate([s], beam=a.beam)[0] for s in sources]
    t_single = time.perf_counter() - t0
    same = sum(x["translation"] == y["translation"] for x, y in zip(batched, single))
    return {
        "ckpt": a.ckpt,
        "threads": torch.get_num_threads(),
        "beam": a.beam,
        "sentences": len(sources),
        "batched_sent_per_s": round(len(sources) / t_batched, 2),
        "single_sent_per_s": round(len(sources) / t_single, 2),
        "batched_over_single": round(t_single / t_batched, 2),
        "identical_outputs": same,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train", help="training tokens/s of a config")
    t.add_argument("--config", default="configs/translate/quality.yaml")
    t.add_argument("--steps", type=int, default=4, help="timed steps")
    t.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    t.add_argument("--pairs", type=int, default=6000, help="training pairs sampled for batches")
    t.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    t.add_argument("overrides", nargs="*")
    d = sub.add_parser("decode", help="batched vs one-at-a-time decoding")
    d.add_argument("--ckpt", default="models/translate")
    d.add_argument("--sentences", type=int, default=64)
    d.add_argument("--beam", type=int, default=5)
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = bench_train(a) if a.what == "train" else bench_decode(a)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
