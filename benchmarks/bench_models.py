"""Training-step speed of gensys `decoder_lm` vs Hugging Face (same size, same weights, same process).

Forward + backward tokens/s; fp32 on the CPU with 2 threads by default (`--device cuda --dtype bfloat16`
for a GPU). Each round times one step of each model (order alternating), so machine noise (other processes
on shared cores) hits both alike; tokens/s use the median step time and the ratio is the median over rounds
of (HF step time / gensys step time).

    .venv/bin/python benchmarks/bench_models.py                # GPT-2 and Llama shapes
    .venv/bin/python benchmarks/bench_models.py --arch llama --profile

A ratio >= 1.0 means gensys is not slower than HF.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from gensys.models.convert import model_from_hf


def hf_model(arch: str, args: argparse.Namespace) -> torch.nn.Module:
    if arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=args.vocab,
            n_embd=args.d_model,
            n_layer=args.layers,
            n_head=args.heads,
            n_positions=args.seq,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            attn_implementation="sdpa",
        )
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        intermediate_size=args.d_model * 8 // 3 // 8 * 8,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads // 2,
        max_position_embeddings=args.seq,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg)


def step_time(model: torch.nn.Module, ids: torch.Tensor, hf: bool) -> float:
    """Seconds for one forward + backward (next-token cross-entropy computed the same way for both)."""
    model.zero_grad(set_to_none=True)
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    logits = model(ids).logits if hf else model(ids)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
    loss.backward()
    sync()
    return time.perf_counter() - t0


def bench(arch: str, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    hf = hf_model(arch, args).train()
    ours = model_from_hf(hf).train()
    dtype = getattr(torch, args.dtype)
    hf.to(args.device, dtype)
    ours.to(args.device, dtype)
    n_params = sum(p.numel() for p in ours.parameters())
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=args.device)
    for _ in range(args.warmup):
        step_time(ours, ids, False)
        step_time(hf, ids, True)
    times: dict[str, list[float]] = {"gensys": [], "hf": []}
    for i in range(args.iters):
        order = [("gensys", ours, False), ("hf", hf, True)]
        for name, model, is_hf in order if i % 2 == 0 else order[::-1]:
            times[name].append(step_time(model, ids, is_hf))
    tokens = args.batch * args.seq
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    # Ratio of each round's pair of steps, then the median: robust to load that drifts between rounds.
    ratio = statistics.median(h / g for g, h in zip(times["gensys"], times["hf"]))
    print(
        f"{arch:6s} {n_params / 1e6:.2f}M params, {args.batch}x{args.seq} tokens, {args.device} {args.dtype} "
        f"gensys {tps['gensys']:8.0f} tok/s   HF {tps['hf']:8.0f} tok/s   ratio {ratio:.3f}"
    )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, model, is_hf in (("gensys", ours, False), ("hf", hf, True)):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step_time(model, ids, is_hf)
            print(f"--- {name} ---")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", choices=["gpt2", "llama", "both"], default="both")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--profile", action="store_true", help="print the top CPU ops of one step of each model")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    print(f"torch {torch.__version__}, {args.threads} CPU threads")
    for arch in ("gpt2", "llama") if args.arch == "both" else (args.arch,):
        bench(arch, args)


if __name__ == "__main__":
    main()
