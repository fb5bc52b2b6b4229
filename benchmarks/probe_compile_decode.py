"""Probe for issue 5: does `torch.compile` of the per-block math speed up a CPU decode step?

Compiles each block's MLP and norms of the converted 9.6M Llama of `bench_generate.py` (the parts without
KV-cache mutation; the cache's Python bookkeeping would break a whole-step graph) and times greedy decoding
of 64 tokens, batch 1, one thread, CPU time, best of 5, against the same model eager.

    .venv/bin/python benchmarks/probe_compile_decode.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_generate import llama_pair  # noqa: E402
from gensys.generate import GenerationConfig, generate  # noqa: E402


def best_cpu_seconds(model: torch.nn.Module, ids: torch.Tensor, cfg: GenerationConfig, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.process_time()
        generate(model, ids, config=cfg)
        times.append(time.process_time() - t)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    _, ours = llama_pair()
    ids = torch.randint(3, 8000, (1, 32))
    cfg = GenerationConfig(max_new_tokens=64)
    eager = best_cpu_seconds(ours, ids, cfg, 5)
    for blk in ours.blocks:
        for name in ("attn_norm", "mlp_norm", "mlp"):
            if hasattr(blk, name):
                setattr(blk, name, torch.compile(getattr(blk, name), dynamic=True))
    t0 = time.perf_counter()
    best_cpu_seconds(ours, ids, cfg, 1)
    print(f"compilation and first call: {time.perf_counter() - t0:.1f} s")
    compiled = best_cpu_seconds(ours, ids, cfg, 5)
    ratio = eager / compiled
    print(f"eager {64 / eager:.0f} tok/s, MLP + norms compiled {64 / compiled:.0f} tok/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
