"""Shared helpers of the metrics tests (a uniquely named module: `conftest` may collide across areas)."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRANSLATE = REPO / "data" / "translate"
CAPTIONS_TSV = Path("/work/shared/data/caption/captions.tsv")
DEBIAN_WORDNET = Path("/usr/share/wordnet")


def read_gz(name: str) -> list[str]:
    with gzip.open(TRANSLATE / name, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def perturb(lines: list[str], seed: int = 0) -> list[str]:
    """A deterministic stand-in for system output: drop, swap and repeat words in most lines."""
    rng = random.Random(seed)
    out = []
    for s in lines:
        w = s.split()
        r = rng.random()
        if r < 0.3 and len(w) > 3:
            del w[rng.randrange(len(w))]
        elif r < 0.6 and len(w) > 3:
            i = rng.randrange(len(w) - 1)
            w[i], w[i + 1] = w[i + 1], w[i]
        elif r < 0.7:
            w = w[: len(w) // 2]
        out.append(" ".join(w))
    return out
