"""`gensys compose prepare | train | eval | predict`: the Smart Compose recipes.

    gensys compose prepare --config configs/compose/demo.yaml      # clean + dedupe AESLC, train the tokenizer
    gensys compose train   --config configs/compose/demo.yaml      # LM (+ n-gram baseline), export, calibrate
    gensys compose eval    --config configs/compose/demo.yaml --ckpt models/compose
    echo "Please let me " | gensys compose predict --ckpt models/compose --subject "Budget"

Every command takes `--config FILE` and trailing `section.key=value` overrides (e.g. `train.max_steps=50`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gensys.apps.compose import evaluate as ev
from gensys.apps.compose.config import Config
from gensys.apps.compose.data import Email, LengthBuckets, LMExamples, collate, load_prepared, prepare
from gensys.apps.compose.memory import add_memory, held_out_positions, perplexities
from gensys.apps.compose.ngram import NgramBackend, NgramLM
from gensys.apps.compose.predictor import CALIBRATION_FILE, ComposePredictor, load_predictor
from gensys.checkpoint import load_checkpoint, save_checkpoint
from gensys.config import dump_yaml, load_config
from gensys.data.atomic import atomic_write_text
from gensys.data.tokenizer import Tokenizer
from gensys.errors import DataError
from gensys.metrics import PerplexityAccumulator
from gensys.models.decoder_lm import DecoderLM
from gensys.train import (
    ResumableLoader,
    Trainer,
    init_distributed,
    is_main_process,
    lm_eval_fn,
    seed_everything,
)

# One request decodes a handful of rows through d=256 matrices: splitting such small products over threads
# costs more in synchronisation than it saves (and collapses when other processes share the cores).
_THREADS_HELP = "torch intra-op threads (1 is fastest for single-request decoding)"


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _parser(prog: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gensys compose {prog}", description=doc, formatter_class=_Formatter)
    p.add_argument("--config", default=None, help="YAML config (configs/compose/{tiny,demo,quality}.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=50")
    return p


def _load(args: argparse.Namespace) -> Config:
    return load_config(Config, args.config, args.overrides)


def _log(msg: str) -> None:
    print(f"[compose] {msg}", file=sys.stderr, flush=True)


def _prepared(cfg: Config) -> tuple[dict[str, list[Email]], Tokenizer]:
    if not (Path(cfg.data.prepared_dir) / "tokenizer.json").is_file():
        _log(f"no prepared data in {cfg.data.prepared_dir}: preparing it now")
        prepare(cfg.data)
    return load_prepared(cfg.data)


def _checkpoint_meta(cfg: Config) -> dict[str, Any]:
    """What config.json carries besides the model: the serving settings and the prompt layout."""
    data = {
        "subject_max_tokens": cfg.data.subject_max_tokens,
        "previous_max_tokens": cfg.data.previous_max_tokens,
    }
    return {"suggest": dataclasses.asdict(cfg.suggest), "data": data}


# ----------------------------------------------------------------------------------------------------------
# prepare


def prepare_main(argv: list[str]) -> int:
    """Clean and de-duplicate the AESLC splits and train the byte-level BPE tokenizer."""
    args = _parser("prepare", prepare_main.__doc__ or "").parse_intermixed_args(argv)
    cfg = _load(args)
    stats = prepare(cfg.data)
    print(json.dumps(stats, indent=2))
    return 0


# ----------------------------------------------------------------------------------------------------------
# train


def train_main(argv: list[str]) -> int:
    """Train the phrase-generator LM (and the n-gram baseline); export fp16 + calibrated threshold."""
    p = _parser("train", train_main.__doc__ or "")
    p.add_argument("--no-ngram", action="store_true", help="skip the n-gram baseline")
    args = p.parse_intermixed_args(argv)
    cfg = _load(args)
    splits, tok = _prepared(cfg)
    model_cfg = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size)
    out = Path(cfg.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_yaml(dataclasses.replace(cfg, model=model_cfg)))

    seed_everything(cfg.train.seed)
    model = DecoderLM(model_cfg)
    n_params = sum(p.numel() for p in model.parameters())
    train_set = LMExamples(splits["train"], tok, cfg.data, seed=cfg.train.seed)
    dev_cfg = dataclasses.replace(cfg.data, previous_prob=0.0)
    dev_set = LMExamples(splits["dev"], tok, dev_cfg)
    _log(
        f"model {n_params / 1e6:.2f}M params; "
        f"train {len(train_set)} emails / {train_set.target_tokens()} tokens"
    )

    def coll(batches):  # the loaders hand over one pre-formed batch at a time
        return collate(batches[0], tok.pad_id)

    bs = cfg.train.micro_batch_size
    train_batches = LengthBuckets(train_set, bs, seed=cfg.train.seed)
    env = init_distributed(cfg.train.parallel, cfg.train.device)  # torchrun: each dp rank takes its batches
    loader = ResumableLoader(
        train_batches, 1, coll, seed=cfg.train.seed, rank=env.dp_rank, world_size=env.dp_size
    )
    eval_fn = lm_eval_fn(LengthBuckets(dev_set, bs, seed=0), 1, coll, max_batches=cfg.train.eval_steps)
    meta = {"family": "decoder_lm", "model": dataclasses.asdict(model_cfg), "compose": _checkpoint_meta(cfg)}
    t0 = time.perf_counter()
    summary = Trainer(
        model, cfg.train, train_data=loader, eval_fn=eval_fn, model_config=meta, tokenizer=tok
    ).fit()
    _log(
        f"trained {summary['step']} steps in {time.perf_counter() - t0:.0f} s; best {summary['best_metric']}"
    )

    if not is_main_process():
        return 0  # under torchrun rank 0 alone builds the baseline, exports and calibrates
    if cfg.ngram.enabled and not args.no_ngram:
        t1 = time.perf_counter()
        lm = NgramLM.train(
            (e.body for e in splits["train"]), cfg.ngram.order, cfg.ngram.discount, cfg.ngram.min_count
        )
        lm.save(out / "ngram.json.gz")
        _log(f"n-gram baseline ({cfg.ngram.order}-gram) built in {time.perf_counter() - t1:.0f} s")

    best = Path(summary["best"] or summary["last"])
    target = best
    if cfg.export_dir:
        model, config, _ = load_checkpoint(best)
        config = {k: v for k, v in config.items() if k in ("family", "model", "compose", "step")}
        target = save_checkpoint(cfg.export_dir, model, config, tok, dtype=torch.float16)
        _log(f"exported fp16 checkpoint to {target}")
    if cfg.memory.enabled:
        model, _, _ = load_checkpoint(target)
        add_memory(target, model, tok, splits["train"], splits["dev"], cfg.memory, cfg.data, log=_log)  # type: ignore[arg-type]
    _calibrate_checkpoint(Path(target), cfg, splits["dev"])
    return 0


def memory_main(argv: list[str]) -> int:
    """Add the ∞-gram memory of the train emails to a checkpoint, fit its weights on dev, recalibrate."""
    p = _parser("memory", memory_main.__doc__ or "")
    p.add_argument("--ckpt", default="models/compose", help="compose checkpoint directory (written in place)")
    args = p.parse_intermixed_args(argv)
    cfg = _load(args)
    splits, _ = _prepared(cfg)
    model, _, tok = load_checkpoint(args.ckpt)
    if tok is None:
        raise DataError(f"{args.ckpt} has no tokenizer.json")
    add_memory(args.ckpt, model, tok, splits["train"], splits["dev"], cfg.memory, cfg.data, log=_log)  # type: ignore[arg-type]
    # The threshold was set for the LM alone: with the memory the suggestions' confidences moved.
    _calibrate_checkpoint(Path(args.ckpt), cfg, splits["dev"])
    return 0


def _calibrate_checkpoint(ckpt: Path, cfg: Config, dev: list[Email]) -> None:
    """Write `calibration.json` into `ckpt`: the threshold giving the target trigger rate on dev emails."""
    if cfg.calibrate_emails <= 0:
        return
    pred = load_predictor(ckpt, latency_budget_ms=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # single-request decoding (see _THREADS_HELP)
    try:
        thr = _calibrate(pred, dev[: cfg.calibrate_emails], cfg.suggest.target_trigger_rate)
    finally:
        torch.set_num_threads(threads)
    _write_calibration(ckpt, thr, cfg.suggest.target_trigger_rate, cfg.calibrate_emails)


def _calibrate(pred: ComposePredictor, emails: list[Email], rate: float) -> float:
    points = ev.collect(pred, emails)
    return ev.calibrate(points, rate)


def _write_calibration(ckpt: Path, threshold: float, rate: float, n_emails: int) -> None:
    calib = {"min_confidence": threshold, "target_trigger_rate": rate, "dev_emails": n_emails}
    atomic_write_text(Path(ckpt) / CALIBRATION_FILE, json.dumps(calib, indent=2) + "\n")
    _log(f"calibrated min_confidence={threshold:.4f} for trigger rate {rate} on {n_emails} dev emails")


# ----------------------------------------------------------------------------------------------------------
# eval


@torch.inference_mode()
def perplexity_on(model: DecoderLM, tok: Tokenizer, emails: list[Email], cfg: Config) -> dict[str, float]:
    """Token perplexity of the test bodies (+ <eos>) given their subjects (gensys.metrics accumulator)."""
    data = LMExamples(emails, tok, dataclasses.replace(cfg.data, previous_prob=0.0))
    order = sorted(range(len(data)), key=lambda i: len(data[i][0]))  # similar lengths: little padding
    acc = PerplexityAccumulator()
    bs = cfg.eval.ppl_batch_size
    for s in range(0, len(order), bs):
        batch = collate([data[i] for i in order[s : s + bs]], tok.pad_id)
        acc.add_logits(model(batch["input_ids"]), batch["labels"])
    words = sum(len(e.body.split()) for e in emails)
    return {"perplexity": acc.value, "nll_per_token": acc.mean_nll, "tokens": acc.n_tokens, "words": words}


def eval_main(argv: list[str]) -> int:
    """Perplexity, ExactMatch@N, trigger rate, chars saved and latency: transformer vs n-gram baseline."""
    p = _parser("eval", eval_main.__doc__ or "")
    p.add_argument("--ckpt", default="models/compose", help="compose checkpoint directory")
    p.add_argument("--ngram", default=None, help="n-gram model (default: <train.out_dir>/ngram.json.gz; "
                   "built from the prepared train split if missing)")  # fmt: skip
    p.add_argument("--out", default=None, help="report directory (default: eval.out_dir)")
    p.add_argument("--budget-ms", type=float, default=0.0, help="latency budget during eval (0 = none)")
    p.add_argument("--no-ngram", action="store_true", help="evaluate the transformer only")
    p.add_argument("--no-transformer", action="store_true",
                   help="evaluate the n-gram baseline only (e.g. with other ngram.* settings)")  # fmt: skip
    p.add_argument("--write-calibration", action="store_true", help="store the dev threshold in --ckpt")
    p.add_argument("--threads", type=int, default=1, help=_THREADS_HELP)
    args = p.parse_intermixed_args(argv)
    torch.set_num_threads(args.threads)
    cfg = _load(args)
    out = Path(args.out or cfg.eval.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits, _ = _prepared(cfg)
    test = splits["test"][cfg.eval.test_start :][: cfg.eval.test_emails or None]
    dev = splits["dev"][: cfg.eval.dev_emails or None]
    if not test or not dev:
        raise DataError("eval needs at least one dev and one test email")
    rate = cfg.eval.target_trigger_rate

    # The checkpoint carries its serving settings; `suggest.*` overrides on this command line replace them
    # (e.g. suggest.num_beams=2), the config file's suggest section does not.
    given = {
        o.split("=", 1)[0].strip().removeprefix("suggest.")
        for o in args.overrides
        if o.startswith("suggest.")
    }
    opts = {k: getattr(cfg.suggest, k) for k in given - {"min_confidence", "latency_budget_ms"}}
    pred = load_predictor(args.ckpt, latency_budget_ms=args.budget_ms, **opts)
    model, _, tok = load_checkpoint(args.ckpt)
    assert tok is not None
    report: dict[str, Any] = {"ckpt": str(args.ckpt), "target_trigger_rate": rate}
    t0 = time.perf_counter()
    ppl_emails = splits["test"][: cfg.eval.ppl_emails or None]
    report["perplexity"] = perplexity_on(model, tok, ppl_emails, cfg)  # type: ignore[arg-type]
    _log(f"test perplexity {report['perplexity']['perplexity']:.2f} ({time.perf_counter() - t0:.0f} s)")
    memory = getattr(pred.backend, "memory", None)
    if memory is not None:  # the same tokens scored by the LM mixed with the ∞-gram memory
        positions = held_out_positions(model, tok, memory[0], ppl_emails, cfg.data)  # type: ignore[arg-type]
        report["perplexity"]["with_memory"] = perplexities(positions, memory[1])[1]
        _log(f"test perplexity with the memory {report['perplexity']['with_memory']:.2f}")

    systems: dict[str, ComposePredictor] = {} if args.no_transformer else {"transformer": pred}
    if not args.no_ngram:
        systems["ngram"] = ComposePredictor(_ngram_backend(cfg, args.ngram, splits), pred.cfg)
    # Boundaries whose next words (with the 3 before the cursor) occur verbatim in the training emails.
    verbatim = None
    rates = [0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 1.0]
    curves: dict[str, list[dict[str, float]]] = {}
    report["systems"] = {}
    for name, predictor in systems.items():
        t1 = time.perf_counter()
        k = cfg.eval.drafts_at_once
        dev_points = ev.collect(predictor, dev, drafts_at_once=k)
        thr = ev.calibrate(dev_points, rate)
        test_points = ev.collect(predictor, test, progress=_progress(name), drafts_at_once=k)
        same_rate_thr = ev.calibrate(test_points, rate)
        if verbatim is None:
            verbatim = ev.verbatim_in_train(test_points, test, (e.body for e in splits["train"]))
        reasons: dict[str, int] = {}
        for pt in test_points:
            reasons[pt.reason] = reasons.get(pt.reason, 0) + 1
        report["systems"][name] = {
            "dev_threshold": thr,
            "at_dev_threshold": ev.metrics_at(test_points, test, thr, cfg.eval.max_n),
            "at_same_trigger_rate": ev.metrics_at(test_points, test, same_rate_thr, cfg.eval.max_n),
            "at_same_trigger_rate_by_group": ev.exact_match_by_group(
                test_points, test, same_rate_thr, verbatim, cfg.eval.max_n
            ),
            "latency_ms_all_requests": ev.latency(test_points),
            "latency_ms_model_requests": ev.triggered_latency(test_points),
            "reasons": reasons,
            "seconds": time.perf_counter() - t1,
        }
        curves[name] = ev.sweep(test_points, test, rates, cfg.eval.max_n)
        # Every scored cursor (before any threshold), so later analyses need no new 20-minute walk.
        rows = [dataclasses.asdict(pt) | {"email_id": test[pt.email].id} for pt in test_points]
        atomic_write_text(out / f"points_{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        if name == "transformer" and args.write_calibration:
            _write_calibration(Path(args.ckpt), thr, rate, len(dev))
        _log(f"{name}: done in {time.perf_counter() - t1:.0f} s")
    report["curves"] = curves
    report["test_emails"], report["dev_emails"] = len(test), len(dev)
    report["drafts_at_once"] = cfg.eval.drafts_at_once  # > 1: latencies are of batched calls
    ev.plot_curves(curves, str(out / "em_vs_trigger.png"))
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    table = report_table(report)
    atomic_write_text(out / "report.md", table)
    print(table)
    return 0


def _progress(name: str):
    def show(done: int, total: int) -> None:
        if done % 10 == 0 or done == total:
            _log(f"{name}: {done}/{total} test emails")

    return show


def _ngram_backend(cfg: Config, path: str | None, splits: dict[str, list[Email]]) -> NgramBackend:
    p = Path(path) if path else Path(cfg.train.out_dir) / "ngram.json.gz"
    if p.is_file():
        lm = NgramLM.load(p)
    else:
        _log(f"{p} not found: building the {cfg.ngram.order}-gram baseline from the train split")
        lm = NgramLM.train(
            (e.body for e in splits["train"]), cfg.ngram.order, cfg.ngram.discount, cfg.ngram.min_count
        )
        lm.save(p)
    return NgramBackend(lm, max_words=cfg.suggest.max_words, beam=cfg.ngram.beam)


def report_table(report: dict[str, Any]) -> str:
    """Markdown: the systems side by side at the same trigger rate (and at the dev-calibrated threshold)."""
    ppl = report["perplexity"]
    lines = [
        f"Test perplexity (transformer, per BPE token): {ppl['perplexity']:.2f} over {ppl['tokens']} tokens"
        + (f"; with its ∞-gram memory: {ppl['with_memory']:.2f}" if "with_memory" in ppl else ""),
        "",
        f"Word boundaries of {report['test_emails']} test emails; thresholds calibrated on "
        f"{report['dev_emails']} dev emails for a {report['target_trigger_rate']:.0%} trigger rate.",
        "",
        "| system | threshold from | trigger rate | EM@1 | EM@2 | EM@3 | EM@4 | EM@5 | EM@3 shown "
        "| chars saved/email "
        "| p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in report["systems"].items():
        lat = s["latency_ms_all_requests"]
        for label, key in (("same rate (test)", "at_same_trigger_rate"), ("dev", "at_dev_threshold")):
            m = s[key]
            ems = " | ".join(f"{m[f'em@{n}']:.3f}" for n in range(1, 6))
            lines.append(
                f"| {name} | {label} | {m['trigger_rate']:.3f} | {ems} | {m['em@3_triggered']:.3f} | "
                f"{m['chars_saved_per_email']:.1f} | {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} |"
            )
    lines.append("")
    lines.append("EM@N counts every word boundary (no suggestion = miss); 'EM@3 shown' is among shown ones.")
    groups = {n: s["at_same_trigger_rate_by_group"] for n, s in report["systems"].items()
              if "at_same_trigger_rate_by_group" in s}  # fmt: skip
    if groups:
        lines += [
            "",
            "Same trigger rate, split by whether the 3 words before the cursor and the 5 after occur "
            "verbatim in the training emails:",
            "",
            "| system | group | share of boundaries | trigger rate | EM@1 | EM@2 | EM@3 | EM@4 | EM@5 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, g in groups.items():
            total = sum(x["boundaries"] for x in g.values()) or 1.0
            for label, m in g.items():
                ems = " | ".join(f"{m[f'em@{n}']:.3f}" for n in range(1, 6))
                lines.append(
                    f"| {name} | {label} | {m['boundaries'] / total:.3f} | {m['trigger_rate']:.3f} | {ems} |"
                )
    if report.get("drafts_at_once", 1) > 1:
        lines.append("")
        lines.append(
            f"Latencies are of calls batching {report['drafts_at_once']} drafts (eval.drafts_at_once)."
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# predict


def predict_main(argv: list[str]) -> int:
    """Suggest a completion for the draft on stdin (or --text); --jsonl reads one request object per line."""
    p = argparse.ArgumentParser(prog="gensys compose predict", description=predict_main.__doc__,
                                formatter_class=_Formatter)  # fmt: skip
    p.add_argument("--ckpt", default="models/compose", help="compose checkpoint directory")
    p.add_argument("--text", default=None, help="the draft (default: stdin)")
    p.add_argument("--subject", default="", help="the email's subject")
    p.add_argument("--previous", default="", help="the email being answered")
    p.add_argument("--cursor", type=int, default=None, help="cursor position (default: end of text)")
    p.add_argument("--jsonl", action="store_true", help="stdin holds JSON request objects, one per line")
    p.add_argument("--min-confidence", type=float, default=None, help="override the calibrated threshold")
    p.add_argument(
        "--budget-ms", type=float, default=None, help="latency budget (default: the checkpoint's; 0 = none)"
    )
    p.add_argument("--threads", type=int, default=1, help=_THREADS_HELP)
    args = p.parse_intermixed_args(argv)
    torch.set_num_threads(args.threads)
    opts: dict[str, float] = {} if args.min_confidence is None else {"min_confidence": args.min_confidence}
    if args.budget_ms is not None:
        opts["latency_budget_ms"] = args.budget_ms
    pred = load_predictor(args.ckpt, **opts)
    if args.jsonl:
        reqs = []
        for i, line in enumerate(sys.stdin.buffer.read().decode("utf-8", errors="strict").splitlines(), 1):
            if line.strip():
                try:
                    reqs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"stdin line {i}: invalid JSON ({e.msg})") from None
        results = pred.suggest_batch(reqs) if reqs else []
    else:
        text: str | bytes = args.text if args.text is not None else sys.stdin.buffer.read()
        if isinstance(text, bytes) and text.endswith(b"\n") and args.cursor is None:
            text = text[:-1]  # `echo` adds a newline the user did not type
        req = {"text": text, "subject": args.subject, "previous": args.previous, "cursor": args.cursor}
        results = pred.suggest_batch([req])
    for r in results:
        print(json.dumps(r, ensure_ascii=False))
    return 0


__all__ = [
    "eval_main",
    "memory_main",
    "predict_main",
    "prepare_main",
    "perplexity_on",
    "report_table",
    "train_main",
]
