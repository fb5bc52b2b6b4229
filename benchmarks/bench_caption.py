"""Captioning speed: the two choices of the caption system that exist for speed, each against its alternative
measured in the same process (ratios > 1 mean the shipped choice is faster).

1. Training step, "encode once per image": a batch of B images with k captions each runs the image encoder on
   B images and indexes the memory for the B*k captions (`caption_loss`), versus encoding each caption's image
   again (B*k encoder passes). Same loss value, checked.
2. Beam search over a batch of images (one `generate` call, beams expanded after one encoder pass) versus one
   image per call. Same captions, checked.

Model: the demo config (CNN 64x64 + 2-layer d192 decoder, vocab 2000), random weights, fp32 CPU. Rounds of
the two sides alternate so that load from other processes hits both alike; the fastest round is reported.

    .venv/bin/python benchmarks/bench_caption.py            # a minute or two on 2 idle cores
    .venv/bin/python benchmarks/bench_caption.py --quick
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gensys.apps.caption.config import Config
from gensys.config import load_config
from gensys.generate import GenerationConfig, generate
from gensys.models.captioner import build_captioner
from gensys.train.losses import token_cross_entropy

ROOT = Path(__file__).resolve().parents[1]


def best_of(rounds: int, a: Callable[[], object], b: Callable[[], object]) -> tuple[float, float]:
    ta, tb = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t)
    return min(ta), min(tb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller batches, fewer rounds")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(
        Config, ROOT / "configs/caption/demo.yaml", ["model.vocab_size=2000", "model.dropout=0.0"]
    )
    model = build_captioner(cfg.model)
    n_img, k, t = (8, 5, 14) if args.quick else (32, 5, 14)
    rounds = 2 if args.quick else 4
    images = torch.randn(n_img, 3, cfg.model.image_size, cfg.model.image_size)
    ids = torch.randint(10, 2000, (n_img * k, t))
    labels = torch.roll(ids, -1, dims=1)
    owner = torch.arange(n_img).repeat_interleave(k)

    def once() -> float:
        mem = model.encode(images).index_select(0, owner)  # (B*k, N, D)
        loss, n = token_cross_entropy(model.decode(ids, mem), labels)
        (loss / n).backward()
        model.zero_grad(set_to_none=True)
        return float(loss.detach())

    def per_caption() -> float:
        mem = model.encode(images.index_select(0, owner))  # B*k encoder passes
        loss, n = token_cross_entropy(model.decode(ids, mem), labels)
        (loss / n).backward()
        model.zero_grad(set_to_none=True)
        return float(loss.detach())

    assert abs(once() - per_caption()) < 1e-3 * abs(once())
    a, b = best_of(rounds, once, per_caption)
    print(f"train step, {n_img} images x {k} captions: encode once {a * 1e3:.0f} ms, "
          f"encode per caption {b * 1e3:.0f} ms, ratio {b / a:.2f}x")  # fmt: skip

    model.eval()
    gcfg = GenerationConfig(strategy="beam", num_beams=3, num_return_sequences=3, max_new_tokens=16,
                            eos_token_id=2, pad_token_id=0, decoder_start_token_id=1)  # fmt: skip
    n_pred = 8 if args.quick else 16
    px = torch.randn(n_pred, 3, cfg.model.image_size, cfg.model.image_size)

    def batched() -> list:
        return generate(model, config=gcfg, encoder_inputs=(px,)).new_tokens

    def single() -> list:
        return [
            tok
            for i in range(n_pred)
            for tok in generate(model, config=gcfg, encoder_inputs=(px[i : i + 1],)).new_tokens
        ]

    assert batched() == single()
    a, b = best_of(rounds, batched, single)
    print(f"beam search (3 beams, 16 tokens), {n_pred} images: batched {n_pred / a:.1f} images/s, "
          f"one at a time {n_pred / b:.1f} images/s, ratio {b / a:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
