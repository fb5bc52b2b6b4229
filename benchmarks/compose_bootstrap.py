"""Is Smart Compose's ExactMatch@N lead over the n-gram more than the luck of which test emails were drawn?

Reads the per-cursor points that `gensys compose eval` saves (`points_transformer.jsonl`, `points_ngram.jsonl`
in its --out directory), fixes each system's threshold at the one that gives the trigger rate on all the
points (what the eval's "same rate" rows use), and resamples the test emails with replacement: the
percentile interval of the difference in ExactMatch@N (transformer - n-gram) over the resamples. Emails, not
cursors, are the unit: the cursors of one email are far from independent.

    .venv/bin/python benchmarks/compose_bootstrap.py runs/compose/eval_s7_final100 --test-emails 100
    .venv/bin/python benchmarks/compose_bootstrap.py runs/compose/eval_s7_next100 --test-start 100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from gensys.apps.compose import evaluate as ev
from gensys.apps.compose.config import Config
from gensys.apps.compose.data import load_prepared
from gensys.config import load_config
from gensys.metrics import exact_match_at_n


def per_email_hits(points: list[ev.Point], test: list, rate: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hits, boundaries) per email at the threshold giving `rate` over all points."""
    threshold = ev.calibrate(points, rate)
    show = ev.shown(points, threshold)
    conts = [test[p.email].body[p.cursor :] for p in points]
    hits = np.zeros(len(test))
    count = np.zeros(len(test))
    for p, s, c in zip(points, show, conts):
        count[p.email] += 1
        if s:
            hits[p.email] += exact_match_at_n([p.suggestion], [c], n).score
    return hits, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("points_dir", help="an eval --out directory with points_transformer/ngram.jsonl")
    ap.add_argument("--config", default="configs/compose/quality.yaml", help="config of the prepared split")
    ap.add_argument("--test-emails", type=int, default=100, help="eval.test_emails of that eval run")
    ap.add_argument("--test-start", type=int, default=0, help="eval.test_start of that eval run")
    ap.add_argument("--rate", type=float, default=0.2, help="trigger rate")
    ap.add_argument("--n", type=int, default=3, help="ExactMatch@N")
    ap.add_argument("--resamples", type=int, default=10000)
    args = ap.parse_args()
    splits, _ = load_prepared(load_config(Config, args.config).data)
    test = splits["test"][args.test_start :][: args.test_emails or None]
    fields = {f for f in ev.Point.__dataclass_fields__}
    res = {}
    for name in ("transformer", "ngram"):
        rows = Path(args.points_dir, f"points_{name}.jsonl").read_text().splitlines()
        points = [ev.Point(**{k: v for k, v in json.loads(r).items() if k in fields}) for r in rows]
        res[name] = per_email_hits(points, test, args.rate, args.n)
    (ht, count), (hn, _) = res["transformer"], res["ngram"]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(test), size=(args.resamples, len(test)))  # (R, emails)
    denom = count[idx].sum(1)
    diff = (ht[idx].sum(1) - hn[idx].sum(1)) / denom
    ratio = ht[idx].sum(1) / np.maximum(hn[idx].sum(1), 1e-9)
    em_t, em_n = ht.sum() / count.sum(), hn.sum() / count.sum()
    lo, hi = np.percentile(diff, [2.5, 97.5])
    size = f"{len(test)} emails / {int(count.sum())} cursors"
    print(f"ExactMatch@{args.n} at a {args.rate:.0%} trigger rate over {size}:")
    print(f"  transformer {em_t:.4f}, n-gram {em_n:.4f}, difference {em_t - em_n:+.4f}")
    print(f"  95% bootstrap interval of the difference ({args.resamples} resamples): [{lo:+.4f}, {hi:+.4f}]")
    r_lo, r_hi = np.percentile(ratio, [2.5, 97.5])
    print(f"  ratio transformer / n-gram: 95% interval [{r_lo:.2f}, {r_hi:.2f}]")
    print(f"  resamples where the transformer is not ahead: {np.mean(diff <= 0):.4f}")


if __name__ == "__main__":
    main()
