"""How much of Smart Compose's ExactMatch@N is the ranking's, and how much the suggestions'?

Reads the per-cursor points that `gensys compose eval` saves (`points_transformer.jsonl`,
`points_ngram.jsonl` in its --out directory) and, for each system, prints ExactMatch@N at a trigger rate:

- with its own confidence (what the eval reports),
- with a perfect ranking (every suggestion whose first N words are right shown first): the ceiling that no
  confidence or threshold can pass,
- for the transformer, with alternative rankings: a joint-probability-like score `confidence ** (1 /
  words ** a)`, a penalty for suggestions shorter than N words, and agreement with the n-gram's suggestion.

    .venv/bin/python benchmarks/compose_rank_oracle.py runs/compose/eval_s6_quality100 \
        --config configs/compose/quality.yaml --test-emails 100
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from gensys.apps.compose.config import Config
from gensys.apps.compose.data import load_prepared
from gensys.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("points_dir", help="an eval --out directory with points_*.jsonl")
    ap.add_argument("--config", default="configs/compose/quality.yaml", help="config of the prepared split")
    ap.add_argument("--test-emails", type=int, default=100, help="eval.test_emails of that eval run")
    ap.add_argument("--rate", type=float, default=0.2, help="trigger rate")
    ap.add_argument("--n", type=int, default=3, help="ExactMatch@N")
    args = ap.parse_args()
    cfg = load_config(Config, args.config)
    splits, _ = load_prepared(cfg.data)
    test = splits["test"][: args.test_emails or None]

    def load(name: str) -> list[dict]:
        path = Path(args.points_dir) / f"points_{name}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def correct(p: dict) -> bool:
        s, c = p["suggestion"].split(), test[p["email"]].body[p["cursor"] :].split()
        return len(s) >= args.n and s[: args.n] == c[: args.n]

    ngram = {(p["email"], p["cursor"]): p for p in load("ngram")}
    for name in ("transformer", "ngram"):
        pts = load(name)
        shown = int(args.rate * len(pts))
        eligible = [p for p in pts if p["eligible"]]
        hits = [correct(p) for p in eligible]

        def at(score: Callable[[dict], float], eligible=eligible, hits=hits, shown=shown, pts=pts) -> float:
            order = sorted(range(len(eligible)), key=lambda i: -score(eligible[i]))[:shown]
            return sum(hits[i] for i in order) / len(pts)

        print(f"{name}: {len(pts)} cursors, {len(eligible)} suggestions, {sum(hits)} right on {args.n} words")
        print(f"  EM@{args.n} at {args.rate:.0%}: own confidence {at(lambda p: p['confidence']):.4f}, "
              f"perfect ranking {min(sum(hits), shown) / len(pts):.4f}")  # fmt: skip
        if name != "transformer":
            continue
        for a in (0.5, 1.0, 2.0):
            score = at(lambda p, a=a: p["confidence"] ** (len(p["suggestion"].split()) ** -a))
            print(f"  confidence ** (1 / words ** {a}): {score:.4f}")
        short = at(lambda p: p["confidence"] * (len(p["suggestion"].split()) >= args.n))
        print(f"  confidence, suggestions under {args.n} words last: {short:.4f}")

        def agrees(p: dict) -> float:
            q = ngram[(p["email"], p["cursor"])]
            same = q["eligible"] and q["suggestion"].split()[: args.n] == p["suggestion"].split()[: args.n]
            return p["confidence"] + float(same)

        print(f"  confidence, agreeing with the n-gram first: {at(agrees):.4f}")


if __name__ == "__main__":
    main()
