"""A/B of the shared prompt cache for beams (`KVCache.expand(share_prefix=True)`), in one process.

Alternates rounds with sharing on and off (and HF `generate` for the beam case) and prints median CPU times:

- beam search, 4 beams, 64 new tokens, on the ~9.6M Llama of bench_generate.py, prompts of 32 and 256
  tokens (the stepper's 128-token threshold is bypassed, so "shared" really shares at 32 too);
- one Smart Compose `suggest_batch` call with 1 and with 8 drafts (models/compose, AESLC test emails, the
  drafts' caches already synced, so the call is the batched beam search).

    .venv/bin/python benchmarks/bench_shared_prefix.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

import gensys.generate.stepper as stepper_mod
import gensys.nn.cache as cache_mod

sys.path.insert(0, str(Path(__file__).parent))
from bench_generate import VOCAB, hf_kwargs, llama_pair, our_config  # noqa: E402
from gensys.apps.compose.data import read_split  # noqa: E402
from gensys.apps.compose.evaluate import word_boundaries  # noqa: E402
from gensys.apps.compose.predictor import load_predictor  # noqa: E402
from gensys.data.readers import data_path  # noqa: E402
from gensys.generate import generate  # noqa: E402

_expand = cache_mod.KVCache.expand


def _never_share(self, n, share_prefix=False):  # the copied path, whatever the caller asks
    return _expand(self, n, False)


def sharing(on: bool) -> None:
    cache_mod.KVCache.expand = _expand if on else _never_share
    stepper_mod.SHARE_PREFIX_MIN_TOKENS = 0


def beam_ab(rounds: int = 4) -> None:
    torch.manual_seed(0)
    hf, ours = llama_pair()
    for plen in (32, 256):
        ids = torch.randint(2, VOCAB, (1, plen))
        times: dict[str, list[float]] = {"shared": [], "copied": [], "hf": []}
        for _ in range(rounds):
            for mode in times:
                sharing(mode == "shared")
                t = time.thread_time()
                if mode == "hf":
                    with torch.no_grad():
                        hf.generate(ids, **hf_kwargs("beam4", 64))
                else:
                    generate(ours, ids, None, our_config("beam4", 64))
                times[mode].append(time.thread_time() - t)
        m = {k: statistics.median(v) for k, v in times.items()}
        print(
            f"beam 4, prompt {plen}: shared {m['shared']:.3f} s, copied {m['copied']:.3f} s, "
            f"HF {m['hf']:.3f} s; "
            f"HF/shared {m['hf'] / m['shared']:.2f}x, HF/copied {m['hf'] / m['copied']:.2f}x"
        )


def compose_ab(ckpt: str = "models/compose") -> None:
    pred = load_predictor(ckpt, min_confidence=0.0, latency_budget_ms=0)
    emails = read_split(data_path("compose/aeslc_test.jsonl.gz"), min_words=3, limit=8)

    def reqs(k: int, n: int, tag: str) -> list[dict]:
        out = []
        for i, e in enumerate(emails[:n]):
            cuts = word_boundaries(e.body)
            out.append(
                {"text": e.body[: cuts[min(k, len(cuts) - 1)]], "subject": e.subject, "draft_id": f"{tag}{i}"}
            )
        return out

    for n in (1, 8):
        times: dict[str, list[float]] = {"shared": [], "copied": []}
        for k in range(4, 24):
            for mode in times:
                sharing(mode == "shared")
                r = reqs(k, n, f"{mode}{n}-")
                pred.suggest_batch(r)  # sync the drafts: the timed call is the beam search
                t = time.thread_time()
                pred.suggest_batch(r)
                times[mode].append((time.thread_time() - t) * 1000)
        m = {k: statistics.median(v) for k, v in times.items()}
        print(f"compose, {n} draft(s) per call: shared {m['shared']:.1f} ms, copied {m['copied']:.1f} ms CPU")


if __name__ == "__main__":
    torch.set_num_threads(1)
    beam_ab()
    compose_ab()
