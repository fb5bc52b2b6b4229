"""Training-engine speed and memory on the CPU, against references measured in the same run.

1. Throughput: one optimizer step of `gensys.train.Trainer` (token counting, AdamW, clipping, lr schedule) on
   `decoder_lm`, against a Trainer-free plain loop over Hugging Face `LlamaForCausalLM` of identical size
   (forward with labels, backward, clip, AdamW, schedule), both fp32, eager and with `torch.compile`. Rounds
   alternate the two so that noise from other processes on shared cores hits both; tokens/s use median step
   times, the ratio is the median over rounds of (HF time / gensys time): >= 1.0 means gensys is not slower.
   MFU = model FLOPs/s (6 N + 12 L d T per token, the PaLM formula) over the fp32 matmul rate measured in the
   same run (this CPU's datasheet peak is unknown; a large sgemm is what is reachable).
2. Peak memory of one training step with and without activation checkpointing (same model, longer context),
   each in a fresh subprocess: the peak resident set (VmHWM, reset through /proc/self/clear_refs after a
   warm-up step) minus the resident set before the step. The bytes autograd saves for backward are counted
   too, exactly, with saved-tensor hooks.
3. bf16 vs fp32 on this CPU: a 1024^3 matmul, and a whole training step under bf16 autocast vs fp32.

    .venv/bin/python benchmarks/bench_train.py              # all, ~5-10 minutes on 2 cores
    .venv/bin/python benchmarks/bench_train.py --no-compile --rounds 3
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from gensys.models.decoder_lm import DecoderLM, llama_config
from gensys.train import ResumableLoader, TrainConfig, Trainer, lm_loss

VOCAB, D, LAYERS, HEADS, FF = 8192, 256, 4, 4, 688


def our_model(seq: int) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(
        llama_config(vocab_size=VOCAB, d_model=D, n_layers=LAYERS, n_heads=HEADS, d_ff=FF, max_seq_len=seq)
    )


def hf_model(seq: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=FF,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=seq,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def flops_per_token(model: torch.nn.Module, seq: int) -> float:
    """6 N (N = parameters doing matmuls: all but the embedding table) + 12 L d T for attention scores."""
    n = sum(p.numel() for name, p in model.named_parameters() if "emb" not in name and p.dim() == 2)
    return 6 * n + 12 * LAYERS * D * seq


def matmul_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 5) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def batches(batch: int, seq: int):
    g = torch.Generator().manual_seed(0)
    items = [torch.randint(0, VOCAB, (seq + 1,), generator=g) for _ in range(batch * 4)]

    def collate(xs):
        x = torch.stack(xs)
        return {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    return ResumableLoader(items, batch, collate)


def throughput(args: argparse.Namespace, compiled: bool) -> dict:
    seq, batch = args.seq, args.batch
    cfg = TrainConfig(
        lr=1e-3, warmup_steps=2, max_steps=10_000, grad_clip=1.0, out_dir=tempfile.mkdtemp(), progress=False,
        compile=compiled,  # the trainer compiles each block and the default loss (lm_loss)
    )  # fmt: skip
    ours = Trainer(our_model(seq), cfg, train_data=batches(batch, seq))
    hf = hf_model(seq)
    if compiled:
        hf.compile()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 2))
    hf_data = batches(batch, seq)

    def hf_step() -> None:
        b = next(hf_data)
        # HF shifts labels inside; give it the same T positions and T-1 targets (same compute).
        loss = hf(input_ids=b["input_ids"], labels=b["input_ids"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    def ours_step() -> None:
        ours.train_step()

    t0 = time.perf_counter()
    for _ in range(2):  # warm-up (and compilation)
        ours_step()
        hf_step()
    warm = time.perf_counter() - t0
    t_ours, t_hf, ratios = [], [], []
    for r in range(args.rounds):
        pair = [("ours", ours_step), ("hf", hf_step)]
        if r % 2:
            pair.reverse()
        times = {}
        for name, fn in pair:
            t = time.perf_counter()
            fn()
            times[name] = time.perf_counter() - t
        t_ours.append(times["ours"])
        t_hf.append(times["hf"])
        ratios.append(times["hf"] / times["ours"])
    tokens = batch * seq
    fpt = flops_per_token(ours.model, seq)
    med_ours, med_hf = statistics.median(t_ours), statistics.median(t_hf)
    return {
        "compiled": compiled,
        "tokens_per_step": tokens,
        "gensys_tok_s": tokens / med_ours,
        "hf_tok_s": tokens / med_hf,
        "ratio_hf_time_over_gensys_time": statistics.median(ratios),
        "gensys_gflops": fpt * tokens / med_ours / 1e9,
        "warmup_s": warm,
    }


def bf16_step_slowdown(args: argparse.Namespace, steps: int = 2) -> dict:
    """Median step time of the same Trainer under bf16 autocast vs fp32 (fresh models, same data)."""
    times = {}
    for prec in ("fp32", "bf16"):
        cfg = TrainConfig(
            lr=1e-3, warmup_steps=1, max_steps=100, precision=prec, out_dir=tempfile.mkdtemp(), progress=False
        )
        trainer = Trainer(our_model(args.seq), cfg, train_data=batches(args.batch, args.seq), loss_fn=lm_loss)
        trainer.train_step()
        ts = []
        for _ in range(steps):
            t = time.perf_counter()
            trainer.train_step()
            ts.append(time.perf_counter() - t)
        times[prec] = statistics.median(ts)
    return {
        "fp32_step_s": times["fp32"],
        "bf16_step_s": times["bf16"],
        "bf16_slowdown": times["bf16"] / times["fp32"],
    }


def memory_child(ckpt: bool, seq: int, batch: int) -> dict:
    """Run in a fresh process: peak RSS growth of one training step, and autograd's saved bytes."""
    torch.set_num_threads(1)
    cfg = TrainConfig(
        lr=1e-3,
        warmup_steps=1,
        max_steps=100,
        grad_checkpointing=ckpt,
        out_dir=tempfile.mkdtemp(),
        progress=False,
    )
    trainer = Trainer(our_model(seq), cfg, train_data=batches(batch, seq), loss_fn=lm_loss)
    trainer.train_step()  # warm-up: optimizer state and allocator pools exist from here on

    def status(key: str) -> int:
        return int(re.search(rf"{key}:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (VmHWM) to the current one
    before = status("VmRSS")
    trainer.train_step()
    peak = status("VmHWM")
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_sum, n, _ = lm_loss(trainer.model, next(trainer.train_data))
    return {"ckpt": ckpt, "step_peak_bytes": peak - before, "saved_for_backward_bytes": saved[0]}


def memory(args: argparse.Namespace) -> dict:
    out = {}
    for ckpt in (False, True):
        res = subprocess.run(
            [sys.executable, __file__, "--_memory-child", str(int(ckpt)), "--mem-seq", str(args.mem_seq)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[ckpt] = json.loads(res.stdout.strip().splitlines()[-1])
    off, on = out[False], out[True]
    return {
        "seq": args.mem_seq,
        "batch": 2,
        "peak_step_MiB_no_ckpt": off["step_peak_bytes"] / 2**20,
        "peak_step_MiB_ckpt": on["step_peak_bytes"] / 2**20,
        "peak_drop": 1 - on["step_peak_bytes"] / off["step_peak_bytes"],
        "saved_MiB_no_ckpt": off["saved_for_backward_bytes"] / 2**20,
        "saved_MiB_ckpt": on["saved_for_backward_bytes"] / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mem-seq", type=int, default=2048)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--_memory-child", dest="memory_child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child is not None:
        print(json.dumps(memory_child(bool(args.memory_child), args.mem_seq, 2)))
        return
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    report: dict = {"threads": args.threads, "model": f"llama d={D} L={LAYERS} H={HEADS} ff={FF} V={VOCAB}"}
    report["fp32_matmul_gflops"] = matmul_gflops(torch.float32)
    report["bf16_matmul_gflops"] = matmul_gflops(torch.bfloat16, reps=2)
    report["bf16_matmul_slowdown_vs_fp32"] = report["fp32_matmul_gflops"] / report["bf16_matmul_gflops"]
    report["bf16_autocast_train_step"] = bf16_step_slowdown(args)
    runs = [throughput(args, compiled=False)]
    if not args.no_compile:
        runs.append(throughput(args, compiled=True))
    for r in runs:
        r["mfu_vs_measured_sgemm"] = r["gensys_gflops"] / report["fp32_matmul_gflops"]
    report["throughput"] = runs
    report["memory"] = memory(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
