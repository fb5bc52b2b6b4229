"""ExactMatch@3 against trigger rate for several `gensys compose eval` runs in one PNG.

Each run directory holds the `points_<system>.jsonl` that eval writes (every scored cursor before any
threshold); the curves are recomputed from them with the eval harness, on the test emails of the config.

    .venv/bin/python benchmarks/compose_em_curves.py --out docs/compose_em_vs_epochs.png \\
        "transformer 2.7 epochs (CPU, 48 min)=runs/compose/eval_s5_quality/points_transformer.jsonl" \\
        "4-gram=runs/compose/eval_s5_quality/points_ngram.jsonl" ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gensys.apps.compose import evaluate as ev  # noqa: E402
from gensys.apps.compose.config import Config  # noqa: E402
from gensys.apps.compose.recipe import _prepared  # noqa: E402
from gensys.config import load_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="LABEL=path/to/points_<system>.jsonl")
    ap.add_argument(
        "--config", default="configs/compose/quality.yaml", help="config whose prepared split to read"
    )
    ap.add_argument("--out", required=True, help="PNG path")
    ap.add_argument("--n", type=int, default=3, help="ExactMatch@N")
    args = ap.parse_args()
    splits, _ = _prepared(load_config(Config, args.config))
    rates = [0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 1.0]

    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for item in args.runs:
        label, path = item.split("=", 1)
        fields = set(ev.Point.__dataclass_fields__)
        with open(path) as f:
            points = [ev.Point(**{k: v for k, v in json.loads(line).items() if k in fields}) for line in f]
        test = splits["test"][: max(p.email for p in points) + 1]
        curve = ev.sweep(points, test, rates, args.n)
        at20 = ev.metrics_at(points, test, ev.calibrate(points, 0.2), args.n)[f"em@{args.n}"]
        print(f"{label}: EM@{args.n} at a 20% trigger rate {at20:.3f}")
        style = "--" if "gram" in label else "-"
        xs, ys = [c["trigger_rate"] for c in curve], [c[f"em@{args.n}"] for c in curve]
        ax.plot(xs, ys, style, marker="o", markersize=3, label=label)
    ax.axvline(0.2, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("trigger rate (share of word boundaries with a suggestion)")
    ax.set_ylabel(f"ExactMatch@{args.n} over all word boundaries")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Smart Compose (AESLC test): transformer by training epochs vs 4-gram", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
