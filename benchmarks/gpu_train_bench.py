"""GPT-2-small (124M) training speed and MFU on one GPU: bf16 autocast, SDPA flash attention, torch.compile.

Times `gensys.train.Trainer.train_step` (the engine every system uses: token counting, AdamW, grad clipping,
lr schedule) on `decoder_lm` with GPT-2-small shapes, and, in the same run, a bare nanoGPT-style loop over the
same model (whole-model compile, fused AdamW, no clipping) as the reference for the trainer's overhead.
Synthetic tokens, no downloads; prints one JSON object. Anchor: nanoGPT reports ~29-40% MFU for this size
on one A100/H100-class GPU.

    python benchmarks/gpu_train_bench.py                 # ~2-3 minutes, most of it compilation
    python benchmarks/gpu_train_bench.py --batch 8 --no-compile

MFU = (6 N + 12 L d T) FLOPs per token x tokens/s / peak dense bf16 FLOP/s of the card (N counts the tied
embedding once, as nanoGPT does; the position table is left out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a plain checkout too

from gensys.models.decoder_lm import DecoderLM, gpt2_config  # noqa: E402
from gensys.train import ResumableLoader, TrainConfig, Trainer, lm_loss, token_cross_entropy  # noqa: E402

PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12}


def peak_flops(name: str) -> float | None:
    for key, val in PEAK_BF16.items():  # most specific names first
        if key in name:
            return val
    return None


def build(seq: int) -> DecoderLM:
    torch.manual_seed(0)
    # vocab padded to a multiple of 64 (nanoGPT's 50304) for tensor-core friendly shapes.
    return DecoderLM(gpt2_config(vocab_size=50304, d_model=768, n_layers=12, n_heads=12, max_seq_len=seq))


def flops_per_token(model: DecoderLM, seq: int) -> float:
    cfg = model.cfg
    n = sum(p.numel() for p in model.parameters())  # tied lm_head counted once
    if model.pos_emb is not None:
        n -= model.pos_emb.emb.weight.numel()
    return 6 * n + 12 * cfg.n_layers * cfg.d_model * seq


def loader(batch: int, seq: int) -> ResumableLoader:
    g = torch.Generator().manual_seed(0)
    items = torch.randint(0, 50257, (batch * 8, seq + 1), generator=g)

    def collate(xs):
        x = torch.stack(xs)
        return {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    return ResumableLoader(list(items), batch, collate)


def timed(step, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds of warm-up incl. compilation, median seconds per step over `steps` synchronised steps)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return warm, statistics.median(times)


def run_trainer(args: argparse.Namespace) -> dict:
    cfg = TrainConfig(
        lr=6e-4,
        warmup_steps=10,
        max_steps=10_000,
        grad_clip=1.0,
        precision="bf16",
        compile=not args.no_compile,
        out_dir=tempfile.mkdtemp(),
        progress=False,
    )
    trainer = Trainer(build(args.seq), cfg, train_data=loader(args.batch, args.seq), loss_fn=lm_loss)
    torch.cuda.reset_peak_memory_stats()
    warm, dt = timed(trainer.train_step, args.warmup, args.steps)
    loss = float(trainer.train_step()["loss"])
    return {
        "warmup_s": warm,
        "step_s": dt,
        "loss": loss,
        "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30,
    }


def run_plain(args: argparse.Namespace) -> dict:
    model = build(args.seq).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    fwd = model if args.no_compile else torch.compile(model)
    data = loader(args.batch, args.seq)

    def step() -> None:
        b = next(data)
        x, y = b["input_ids"].cuda(non_blocking=True), b["labels"].cuda(non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss_sum, n = token_cross_entropy(fwd(x), y)
        (loss_sum / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    warm, dt = timed(step, args.warmup, args.steps)
    return {"warmup_s": warm, "step_s": dt, "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-reference", action="store_true", help="skip the bare-loop reference")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        sys.exit(1)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    from torch.nn.attention import SDPBackend, sdpa_kernel

    name = torch.cuda.get_device_name()
    peak = peak_flops(name)
    fpt = flops_per_token(build(args.seq), args.seq)
    tokens = args.batch * args.seq
    out: dict = {
        "device": name,
        "torch": torch.__version__,
        "model": "gpt2-small 124M (d=768, L=12, H=12, V=50304)",
        "batch": args.batch,
        "seq": args.seq,
        "compile": not args.no_compile,
        "precision": "bf16 autocast, fp32 master weights",
        "attention": "SDPA restricted to the flash backend",
        "peak_bf16_tflops": peak / 1e12 if peak else None,
    }
    # Only the flash kernel is allowed: a silent fallback to the math path would fail here instead.
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        runs = {"gensys_trainer": run_trainer(args)}
        if not args.no_reference:
            runs["bare_loop"] = run_plain(args)
    for r in runs.values():
        r["tok_s"] = tokens / r["step_s"]
        r["tflops"] = fpt * r["tok_s"] / 1e12
        r["mfu"] = fpt * r["tok_s"] / peak if peak else None
    out.update(runs)
    if "bare_loop" in runs:
        out["trainer_speed_vs_bare_loop"] = runs["bare_loop"]["step_s"] / runs["gensys_trainer"]["step_s"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
