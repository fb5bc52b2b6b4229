"""Command-line entry points: `gensys metrics NAME --hyp FILE --ref FILE ...` and `gensys report`.

Files hold one segment per line, UTF-8. Results are printed as JSON on stdout (sacrebleu's layout: name,
score, signature, details); bad input gives one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from gensys.metrics.bleu import bleu, chrf, coco_bleu
from gensys.metrics.cider import cider, cider_d, coco_tokenize
from gensys.metrics.completion import exact_match_at_n
from gensys.metrics.events import DEFAULT_DB
from gensys.metrics.inputs import MetricInputError, Score
from gensys.metrics.meteor import meteor
from gensys.metrics.report import run_report
from gensys.metrics.rouge import ROUGE_TYPES, coco_rouge_l, rouge


def _one_rouge(t: str) -> Callable[..., list[Score]]:
    return lambda h, r, a: [rouge(h, r, types=(t,), use_stemmer=a.stem)[t]]


# name -> (function of (hyps, refs, args) -> list of scores, default tokenisation)
_COCO = "coco"
METRICS: dict[str, tuple[Callable[..., list[Score]], str]] = {
    "bleu": (lambda h, r, a: [bleu(h, r, tokenize=a.sacrebleu_tok, lowercase=a.lowercase)], "none"),
    "chrf": (lambda h, r, a: [chrf(h, r, lowercase=a.lowercase)], "none"),
    "chrf++": (lambda h, r, a: [chrf(h, r, word_order=2, lowercase=a.lowercase)], "none"),
    "rouge": (lambda h, r, a: list(rouge(h, r, use_stemmer=a.stem).values()), "none"),
    **{t: (_one_rouge(t), "none") for t in ROUGE_TYPES},
    "meteor": (lambda h, r, a: [meteor(h, r, synonyms=not a.no_synonyms, wordnet_dir=a.wordnet)], "none"),
    "cider": (lambda h, r, a: [cider(h, r)], _COCO),
    "cider-d": (lambda h, r, a: [cider_d(h, r)], _COCO),
    "coco-bleu": (lambda h, r, a: [coco_bleu(h, r)], _COCO),
    "coco-rouge-l": (lambda h, r, a: [coco_rouge_l(h, r)], _COCO),
    "exact-match": (
        lambda h, r, a: [exact_match_at_n(h, [x[0] for x in r], a.n, lowercase=a.lowercase)],
        "none",
    ),
}


def read_lines(path: str) -> list[str]:
    """Lines of a UTF-8 file without their line endings; undecodable bytes are a MetricInputError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise MetricInputError(f"cannot read {path}: {e.strerror}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    out = []
    for i, raw in enumerate(lines, 1):
        try:
            out.append(raw.rstrip(b"\r").decode("utf-8"))
        except UnicodeDecodeError as e:
            raise MetricInputError(
                f"{path}:{i}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})"
            ) from None
    return out


def _metrics_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gensys metrics",
        description="Score a hypothesis file against reference files (one segment per line). JSON on stdout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("name", choices=sorted(METRICS), help="metric")
    p.add_argument("--hyp", required=True, help="hypotheses (or suggestions for exact-match), one per line")
    p.add_argument("--ref", required=True, action="append", help="references, one per line; repeat for more")
    p.add_argument(
        "--tokenize",
        choices=["auto", "coco", "none"],
        default="auto",
        help="pre-tokenisation: coco = PTB rules as coco-caption; auto = coco for cider/coco-* only",
    )
    p.add_argument("--sacrebleu-tok", default="13a", help="sacrebleu tokeniser for bleu")
    p.add_argument("--lowercase", action="store_true", help="case-insensitive bleu/chrf/exact-match")
    p.add_argument(
        "--stem", action="store_true", help="Porter-stem tokens for ROUGE (rouge-score's use_stemmer)"
    )
    p.add_argument("--no-synonyms", action="store_true", help="METEOR without the WordNet synonym stage")
    p.add_argument(
        "--wordnet",
        default=None,
        help="WordNet database folder (default: $GENSYS_WORDNET or /usr/share/wordnet)",
    )
    p.add_argument("--n", type=int, default=3, help="N of ExactMatch@N")
    p.add_argument("--per-segment", action="store_true", help="include per-segment scores")
    return p  # fmt: skip


def metrics_main(argv: list[str]) -> int:
    """`gensys metrics`: print the metric's JSON result; 2 on bad input."""
    args = _metrics_parser().parse_args(argv)
    try:
        hyps = read_lines(args.hyp)
        streams = [read_lines(r) for r in args.ref]
        for path, s in zip(args.ref, streams):
            if len(s) != len(hyps):
                raise MetricInputError(
                    f"{args.hyp} has {len(hyps)} lines but {path} has {len(s)}: counts must match"
                )
        refs = [[s[i] for s in streams if s[i] != ""] for i in range(len(hyps))]  # empty line = no reference
        fn, default_tok = METRICS[args.name]
        tok = default_tok if args.tokenize == "auto" else args.tokenize
        if tok == _COCO:
            hyps = [coco_tokenize(h) for h in hyps]
            refs = [[coco_tokenize(r) for r in rs] for rs in refs]
        scores = fn(hyps, refs, args)
    except MetricInputError as e:
        print(f"gensys metrics: error: {e}", file=sys.stderr)
        return 2
    out = [s.to_dict(per_segment=args.per_segment) for s in scores]
    for o in out:
        if tok == _COCO:
            o["tokenize"] = "coco"
    print(json.dumps(out[0] if len(out) == 1 else out, indent=1, ensure_ascii=False))
    return 0


def report_main(argv: list[str]) -> int:
    """`gensys report`: online metrics of the last --since window from the event log."""
    p = argparse.ArgumentParser(
        prog="gensys report",
        description="Online metrics (CTR, latency, acceptance, ...) from the event log of the servers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--since", default="1d", help="window length ending now: 90s, 15m, 12h, 1d, 2w")
    p.add_argument("--db", default=DEFAULT_DB, help="SQLite event log ($GENSYS_EVENTS_DB)")
    p.add_argument("--png", default=None, metavar="DIR", help="also write PNG charts over time into DIR")
    args = p.parse_args(argv)
    try:
        print(run_report(args.db, args.since, args.png))
    except MetricInputError as e:
        print(f"gensys report: error: {e}", file=sys.stderr)
        return 2
    return 0
