"""`gensys translate prepare | train | eval | predict`: the translate system's recipes.

    gensys translate prepare --config configs/translate/demo.yaml          # joint BPE for the pair
    gensys translate train   --config configs/translate/demo.yaml          # MLM pretraining, then fine-tuning
    gensys translate eval    --ckpt models/translate --split test_2016_flickr
    gensys translate predict --ckpt models/translate --beam 5 < src.txt > hyp.txt

Each function takes argv and returns an exit code; user errors raise `GensysError` (one line, exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch

from gensys.apps.translate.config import Config
from gensys.apps.translate.data import (
    TokenBatchLoader,
    collate_mlm,
    collate_pairs,
    encode_pairs,
    encode_sentences,
    monolingual_text,
    read_pairs,
    split_files,
)
from gensys.apps.translate.predictor import Translator, decode_ids, load_predictor
from gensys.checkpoint import load_checkpoint, load_state_dict_verified, save_checkpoint
from gensys.checkpoint import load_config as load_ckpt_config
from gensys.config import config_help, load_config
from gensys.data.readers import open_text, read_parallel
from gensys.data.tokenizer import Tokenizer, train_bpe
from gensys.errors import DataError, GensysError
from gensys.models.seq2seq import Seq2Seq
from gensys.train import (
    Trainer,
    eval_batches,
    evaluate_loss,
    init_distributed,
    is_main_process,
    seed_everything,
)
from gensys.train.losses import token_cross_entropy

DEFAULT_CKPT = "models/translate"


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="config keys (override as key.sub=value):\n  " + "\n  ".join(config_help(Config)),
        formatter_class=_Formatter,
    )
    p.add_argument("--config", default=None, help="YAML config (configs/translate/{tiny,demo,quality}.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. data.pair=en-fr")
    return p


def _load(argv: list[str], prog: str, description: str) -> tuple[Config, argparse.Namespace]:
    args = _config_parser(prog, description).parse_args(argv)
    return load_config(Config, args.config, args.overrides), args


# ---------------------------------------------------------------------------------------------------------
# prepare


def tokenizer_path(cfg: Config) -> Path:
    """Where the run's tokenizer.json lives (`tokenizer.path` or `<train.out_dir>/tokenizer.json`)."""
    return Path(cfg.tokenizer.path) if cfg.tokenizer.path else Path(cfg.train.out_dir) / "tokenizer.json"


def prepare(cfg: Config) -> tuple[Tokenizer, dict[str, Any]]:
    """Train the joint BPE on both sides of the training pairs, save it, and return it with corpus stats."""
    pairs = read_pairs(cfg.data, "train", cfg.data.max_train_pairs)
    text = [s for s, _ in pairs] + [t for _, t in pairs]
    tok = train_bpe(text, cfg.tokenizer.vocab_size, min_frequency=cfg.tokenizer.min_frequency)
    path = tokenizer_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(path)
    src_len = [len(ids) for ids in tok.encode_batch([s for s, _ in pairs])]
    tgt_len = [len(ids) for ids in tok.encode_batch([t for _, t in pairs])]
    limit = cfg.data.max_len - 1
    stats = {
        "tokenizer": str(path),
        "vocab_size": tok.vocab_size,
        "train_pairs": len(pairs),
        f"mean_tokens_{cfg.data.src_lang}": round(sum(src_len) / len(src_len), 2),
        f"mean_tokens_{cfg.data.tgt_lang}": round(sum(tgt_len) / len(tgt_len), 2),
        "truncated_sentences": sum(n > limit for n in src_len + tgt_len),
    }
    return tok, stats


def ensure_tokenizer(cfg: Config) -> Tokenizer:
    """The run's tokenizer: load it if present, else train it (what `prepare` does)."""
    path = tokenizer_path(cfg)
    if path.is_file():
        return Tokenizer.load(path)
    tok, stats = prepare(cfg)
    print(f"translate: trained tokenizer {json.dumps(stats)}", file=sys.stderr)
    return tok


def prepare_main(argv: list[str]) -> int:
    """Build the joint BPE vocabulary for the configured language pair and print corpus statistics."""
    cfg, _ = _load(argv, "gensys translate prepare", prepare_main.__doc__ or "")
    _, stats = prepare(cfg)
    print(json.dumps(stats, indent=2))
    return 0


# ---------------------------------------------------------------------------------------------------------
# train


def seq2seq_loss(model: Any, batch: dict[str, torch.Tensor], *, label_smoothing: float = 0.0):
    """Batch -> (loss_sum, n_tokens, metrics), the Trainer's loss_fn: teacher-forced decoder cross-entropy."""
    # Right-padded targets need no decoder mask: causal attention never reaches the padding after a token.
    logits = model(batch["src_ids"], batch["src_mask"], batch["tgt_in"])  # (B, T, V)
    loss_sum, n_tokens = token_cross_entropy(logits, batch["labels"], label_smoothing=label_smoothing)
    return loss_sum, n_tokens, {}


def _ckpt_info(cfg: Config, stage: str) -> dict[str, Any]:
    return {
        "src_lang": cfg.data.src_lang,
        "tgt_lang": cfg.data.tgt_lang,
        "pair": cfg.data.pair,
        "max_len": cfg.data.max_len,
        "stage": stage,
        "decode": dataclasses.asdict(cfg.decode),
    }


def _sorted_by_length(items: list[Any]) -> list[Any]:
    # Evaluation batches of similar lengths waste little on padding.
    def key(x: Any) -> int:
        return max(len(x[0]), len(x[1])) if isinstance(x, tuple) else len(x)

    return sorted(items, key=key)


def _val_fn(cfg: Config, tok: Tokenizer, val_pairs: list[tuple[str, str]], val_ids: list, mlm: bool):
    """eval_fn for the Trainer: val_loss (no label smoothing) and, when fine-tuning, greedy val BLEU."""
    from gensys.metrics import bleu

    val_sorted = _sorted_by_length(val_ids)
    if mlm:
        protected = sorted(tok.special_ids)
        assert tok.mask_id is not None

        def collate(items: list) -> dict:
            # A fixed generator: every evaluation masks the same tokens, so val_loss is comparable over time.
            g = torch.Generator().manual_seed(1234)
            return collate_mlm(
                items, tok.pad_id, tok.bos_id, tok.mask_id, cfg.pretrain.mask_rate, protected, g
            )
    else:

        def collate(items: list) -> dict:
            return collate_pairs(items, tok.pad_id, tok.bos_id)

    n_bleu = 0 if mlm else min(cfg.val_bleu_sentences, len(val_pairs))

    def run(model: Any) -> dict[str, float]:
        batches = eval_batches(val_sorted, 64, collate, max_batches=cfg.train.eval_steps)
        out = evaluate_loss(model, batches, seq2seq_loss)
        if n_bleu:
            sources = [s for s, _ in encode_pairs(tok, val_pairs[:n_bleu], cfg.data.max_len)]
            dec = decode_ids(
                model,
                tok,
                sources,
                beam=1,
                max_len=cfg.data.max_len,
                max_len_a=cfg.decode.max_len_a,
                max_len_b=cfg.decode.max_len_b,
            )
            hyps = [tok.decode(d.tokens).strip() for d in dec]
            out["val_bleu"] = bleu(hyps, [[t] for _, t in val_pairs[:n_bleu]]).score
        return out

    return run


def _stage_done(run_dir: Path, steps: int) -> bool:
    try:
        return int(load_ckpt_config(run_dir / "last").get("step", -1)) >= steps
    except GensysError:
        return False


def pretrain(cfg: Config, tok: Tokenizer, model: Seq2Seq) -> Path:
    """Masked-LM pretraining of `model` on both languages' monolingual text; returns the run dir."""
    run_dir = Path(cfg.train.out_dir) / "pretrain"
    pt = cfg.pretrain
    if _stage_done(run_dir, pt.steps):
        print(f"translate: pretraining already done in {run_dir}", file=sys.stderr)
        return run_dir
    text = monolingual_text(cfg.data, pt.extra_text, pt.max_sentences)
    mono = encode_sentences(tok, text, cfg.data.max_len)
    val_pairs = read_pairs(cfg.data, "val", cfg.data.max_val_pairs or 500)
    val = encode_sentences(tok, [s for s, _ in val_pairs] + [t for _, t in val_pairs], cfg.data.max_len)
    protected = sorted(tok.special_ids)
    assert tok.mask_id is not None, "the tokenizer needs a <mask> token for MLM pretraining"
    collate = partial(
        collate_mlm, pad_id=tok.pad_id, bos_id=tok.bos_id, mask_id=tok.mask_id, rate=pt.mask_rate,
        protected=protected,
    )  # fmt: skip
    tcfg = dataclasses.replace(
        cfg.train,
        max_steps=pt.steps,
        lr=pt.lr,
        warmup_steps=pt.warmup_steps,
        label_smoothing=0.0,
        out_dir=str(run_dir),
        eval_every=cfg.train.eval_every if cfg.train.eval_every < pt.steps else 0,
        early_stop_metric="val_loss",
        early_stop_mode="min",
        early_stop_patience=0,
    )
    env = init_distributed(tcfg.parallel, tcfg.device)  # torchrun: each dp rank takes its batches
    loader = TokenBatchLoader(
        mono, cfg.data.tokens_per_batch, lambda items, g: collate(items, generator=g), seed=tcfg.seed,
        rank=env.dp_rank, world_size=env.dp_size,
    )  # fmt: skip
    print(
        f"translate: MLM pretraining on {len(mono)} sentences, {len(loader)} batches/epoch", file=sys.stderr
    )
    trainer = Trainer(
        model,
        tcfg,
        train_data=loader,
        loss_fn=seq2seq_loss,
        eval_fn=_val_fn(cfg, tok, val_pairs, val, mlm=True),
        model_config={
            "family": "seq2seq",
            "model": dataclasses.asdict(model.cfg),
            "translate": _ckpt_info(cfg, "pretrain"),
        },
        tokenizer=tok,
    )
    trainer.fit()
    return run_dir


def finetune(cfg: Config, tok: Tokenizer, model: Seq2Seq) -> dict[str, Any]:
    """Supervised fine-tuning on the pairs with label smoothing; returns the Trainer's summary."""
    train_pairs = read_pairs(cfg.data, "train", cfg.data.max_train_pairs)
    val_pairs = read_pairs(cfg.data, "val", cfg.data.max_val_pairs)
    train = encode_pairs(tok, train_pairs, cfg.data.max_len)
    val = encode_pairs(tok, val_pairs, cfg.data.max_len)

    def collate(items: list, g: torch.Generator) -> dict:
        return collate_pairs(items, tok.pad_id, tok.bos_id)

    env = init_distributed(cfg.train.parallel, cfg.train.device)  # torchrun: each dp rank takes its batches
    loader = TokenBatchLoader(
        train, cfg.data.tokens_per_batch, collate, seed=cfg.train.seed,
        rank=env.dp_rank, world_size=env.dp_size,
    )  # fmt: skip
    print(f"translate: fine-tuning on {len(train)} pairs, {len(loader)} batches/epoch", file=sys.stderr)
    trainer = Trainer(
        model,
        cfg.train,
        train_data=loader,
        loss_fn=partial(seq2seq_loss, label_smoothing=cfg.train.label_smoothing),
        eval_fn=_val_fn(cfg, tok, val_pairs, val, mlm=False),
        model_config={
            "family": "seq2seq",
            "model": dataclasses.asdict(model.cfg),
            "translate": _ckpt_info(cfg, "finetune"),
        },
        tokenizer=tok,
    )
    return trainer.fit()


def export_fp16(src_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy a checkpoint as fp16 weights without train_state (what ships in models/translate)."""
    model, config, tok = load_checkpoint(src_dir)
    assert isinstance(model, torch.nn.Module)
    return save_checkpoint(out_dir, model, config, tok, dtype=torch.float16)


def train(cfg: Config) -> dict[str, Any]:
    """prepare (if needed) -> MLM pretraining (if pretrain.steps > 0) -> fine-tuning -> optional export."""
    seed_everything(cfg.train.seed)
    tok = ensure_tokenizer(cfg)
    model_cfg = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size)
    model = Seq2Seq(model_cfg)
    print(
        f"translate: model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    if cfg.pretrain.steps > 0:
        run_dir = pretrain(cfg, tok, model)
        model = Seq2Seq(model_cfg)
        load_state_dict_verified(model, run_dir / "last")
    elif cfg.init_from:
        load_state_dict_verified(model, Path(cfg.init_from))
    t_pre = time.perf_counter() - t0
    summary = finetune(cfg, tok, model)
    summary["pretrain_s"] = round(t_pre, 1)
    summary["total_s"] = round(time.perf_counter() - t0, 1)
    final = summary.get("best") or summary["last"]
    summary["final"] = final
    if cfg.export_dir and is_main_process():  # under torchrun, rank 0 alone writes the export
        summary["exported"] = str(export_fp16(final, cfg.export_dir))
    return summary


def train_main(argv: list[str]) -> int:
    """MLM pretraining (pretrain.steps > 0) then supervised fine-tuning with label smoothing."""
    cfg, _ = _load(argv, "gensys translate train", train_main.__doc__ or "")
    summary = train(cfg)
    print(json.dumps(summary, indent=2))
    return 0


# ---------------------------------------------------------------------------------------------------------
# eval


def _meteor_tokens(texts: list[str]) -> list[str]:
    # METEOR (nltk definition) splits on whitespace: split punctuation off first, as sacrebleu's 13a does.
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    t = Tokenizer13a()
    return [t(x) for x in texts]


def score_translations(hyps: list[str], refs: list[str], tgt_lang: str) -> dict[str, Any]:
    """BLEU (sacrebleu, with signature), chrF, ROUGE-L and METEOR of detokenised hypotheses."""
    from gensys.metrics import bleu, chrf, meteor, rouge

    b = bleu(hyps, [[r] for r in refs])
    c = chrf(hyps, [[r] for r in refs])
    r = rouge(hyps, [[x] for x in refs], types=("rougeL",))["rougeL"]
    # WordNet synonyms exist for English only; other targets get the exact + stem stages.
    m = meteor(_meteor_tokens(hyps), [[x] for x in _meteor_tokens(refs)], synonyms=tgt_lang == "en")
    return {
        "bleu": b.score,
        "bleu_signature": b.signature,
        "bleu_details": b.details.get("verbose_score", ""),
        "chrf": c.score,
        "chrf_signature": c.signature,
        "rougeL_f1": 100 * r.score,
        "meteor": 100 * m.score,
        "meteor_signature": m.signature,
    }


def evaluate(
    translator: Translator,
    sources: list[str],
    refs: list[str],
    *,
    beam: int = 5,
    length_penalty: float | None = None,
    batch_size: int | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Translate `sources`, time it, and score against `refs`; returns (metrics, hypotheses)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation is counted below instead of warned per sentence
        t0 = time.perf_counter()
        out = translator.translate(sources, beam=beam, length_penalty=length_penalty, batch_size=batch_size)
        seconds = time.perf_counter() - t0
    hyps = [o["translation"] for o in out]
    metrics = score_translations(hyps, refs, translator.tgt_lang)
    metrics.update(
        {
            "sentences": len(sources),
            "truncated": sum(o["truncated"] for o in out),
            "beam": beam,
            "decode_s": round(seconds, 2),
            "sentences_per_s": len(sources) / max(seconds, 1e-9),
            "threads": torch.get_num_threads(),
        }
    )
    return metrics, hyps


def _table(m: dict[str, Any]) -> str:
    rows = [
        ("BLEU", f"{m['bleu']:.2f}"),
        ("chrF", f"{m['chrf']:.2f}"),
        ("ROUGE-L F1", f"{m['rougeL_f1']:.2f}"),
        ("METEOR", f"{m['meteor']:.2f}"),
        ("sentences/s", f"{m['sentences_per_s']:.1f}"),
    ]
    head = f"{m.get('pair', '')} {m.get('split', '')} ({m['sentences']} sentences, beam {m['beam']})"
    body = "\n".join(f"  {k:<12} {v:>8}" for k, v in rows)
    return f"{head}\n{body}\n  {m['bleu_signature']}"


def eval_main(argv: list[str]) -> int:
    """BLEU (sacrebleu signature), chrF, ROUGE-L, METEOR and decode speed of a checkpoint on a test split."""
    p = argparse.ArgumentParser(
        prog="gensys translate eval", description=eval_main.__doc__, formatter_class=_Formatter
    )
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="checkpoint directory")
    p.add_argument("--split", default="test_2016_flickr", help="Multi30k split: val or test_2016_flickr")
    p.add_argument("--src", default=None, help="source file (plain/gzip), instead of --split")
    p.add_argument("--ref", default=None, help="reference file aligned with --src")
    p.add_argument("--data-dir", default=None, help="data folder (default: $GENSYS_DATA or the repo's data/)")
    p.add_argument("--beam", type=int, default=5, help="beam width (1 = greedy)")
    p.add_argument("--length-penalty", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--batch-size", type=int, default=None, help="sentences per decoding batch")
    p.add_argument("--limit", type=int, default=0, help="score only the first N sentences (0 = all)")
    p.add_argument("--out", default=None, help="also write the metrics JSON to this file")
    p.add_argument("--hyps", default=None, help="write the translations to this file")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    a = p.parse_args(argv)
    translator = load_predictor(a.ckpt)
    info = load_ckpt_config(a.ckpt).get("translate") or {}
    pair = info.get("pair", f"{translator.src_lang}-{translator.tgt_lang}")
    if bool(a.src) != bool(a.ref):
        raise DataError("--src and --ref must be given together")
    if a.src:
        src_file, ref_file = Path(a.src), Path(a.ref)
    else:
        from gensys.apps.translate.config import DataConfig

        src_file, ref_file = split_files(DataConfig(pair=pair, data_dir=a.data_dir or ""), a.split)
    pairs = read_parallel(src_file, ref_file)
    if a.limit > 0:
        pairs = pairs[: a.limit]
    metrics, hyps = evaluate(
        translator, [s for s, _ in pairs], [t for _, t in pairs], beam=a.beam,
        length_penalty=a.length_penalty, batch_size=a.batch_size,
    )  # fmt: skip
    metrics = {"ckpt": str(a.ckpt), "pair": pair, "split": a.split if not a.src else str(src_file), **metrics}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if a.hyps:
        Path(a.hyps).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    print(json.dumps(metrics, indent=2) if a.json else _table(metrics))
    return 0


# ---------------------------------------------------------------------------------------------------------
# predict


def _read_input_lines(path: str | None) -> list[str]:
    """Lines of `--input` (plain or gzip) or of stdin, strictly UTF-8; an error names the line."""
    if path:
        with open_text(path) as f:
            return [line.rstrip("\n") for line in f]
    lines = []
    for n, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError as e:
            raise DataError(
                f"<stdin> line {n}: invalid UTF-8 at byte {e.start} of the line "
                f"({raw[e.start : e.start + 4]!r}); translate reads UTF-8 text"
            ) from None
    return lines


def predict_main(argv: list[str]) -> int:
    """Translate one sentence per line from stdin or --input; one output line per input line, in order."""
    p = argparse.ArgumentParser(
        prog="gensys translate predict", description=predict_main.__doc__, formatter_class=_Formatter
    )
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="checkpoint directory")
    p.add_argument("--input", default=None, help="input file (plain/gzip); default: stdin")
    p.add_argument("--output", default=None, help="output file; default: stdout")
    p.add_argument("--beam", type=int, default=5, help="beam width (1 = greedy)")
    p.add_argument("--length-penalty", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--batch-size", type=int, default=None, help="sentences per decoding batch")
    p.add_argument("--scores", action="store_true", help="write 'score<TAB>translation' lines")
    a = p.parse_args(argv)
    if a.beam < 1:
        raise DataError(f"--beam must be >= 1, got {a.beam}")
    lines = _read_input_lines(a.input)  # read (and validate) everything before loading the model
    translator = load_predictor(a.ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported per line below
        out = translator.translate(
            lines, beam=a.beam, length_penalty=a.length_penalty, batch_size=a.batch_size
        )
    for n, o in enumerate(out, start=1):
        if o["truncated"]:
            print(
                f"gensys translate predict: warning: line {n} is longer than {translator.max_len - 1} "
                "tokens; only its beginning was translated",
                file=sys.stderr,
            )
    # A translation never spans lines, so output line i always belongs to input line i.
    text = [" ".join(o["translation"].split()) for o in out]
    rows = [f"{o['score']:.4f}\t{t}" for o, t in zip(out, text)] if a.scores else text
    payload = "".join(r + "\n" for r in rows)
    if a.output:
        Path(a.output).write_text(payload, encoding="utf-8")
    else:
        sys.stdout.write(payload)
        sys.stdout.flush()
    return 0


__all__ = [
    "eval_main",
    "evaluate",
    "export_fp16",
    "predict_main",
    "prepare",
    "prepare_main",
    "score_translations",
    "seq2seq_loss",
    "train",
    "train_main",
]
