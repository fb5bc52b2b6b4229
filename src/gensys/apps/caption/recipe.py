"""`gensys caption prepare | train | eval | predict`: the captioning recipes.

    gensys caption prepare --config configs/caption/demo.yaml --data-dir ../shared/data
    gensys caption train   --config configs/caption/demo.yaml --data-dir ../shared/data
    gensys caption eval    --ckpt models/caption --split dev --data-dir ../shared/data
    gensys caption predict --ckpt models/caption --images a.jpg b.png --out preds.jsonl

Data is read from `--data-dir` (or $GENSYS_DATA): a tar or folder of images and captions as TSV or
COCO-style JSON (see `DataConfig`). Numerics live in the library: the loss in `gensys.train.losses`, beam
search in `gensys.generate`, CIDEr-D / BLEU / METEOR / ROUGE-L in `gensys.metrics`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import torch

from gensys.apps.caption.attention import save_attention_png, word_attention
from gensys.apps.caption.config import Config, DataConfig
from gensys.apps.caption.data import (
    CaptionSet,
    Collator,
    SplitData,
    caption_loss,
    center_crop,
    load_split,
    load_split_data,
    mismatched_caption_loss,
    normalize_caption,
)
from gensys.apps.caption.postprocess import PERSON_NOUNS, postprocess, token_words
from gensys.apps.caption.predictor import CaptionPredictor, load_predictor
from gensys.checkpoint import load_checkpoint, save_checkpoint
from gensys.checkpoint import load_config as read_ckpt_config
from gensys.config import ConfigError, load_config
from gensys.data.readers import IMAGE_EXTENSIONS, open_image
from gensys.data.tokenizer import Tokenizer, train_bpe
from gensys.errors import DataError
from gensys.metrics import cider_d, coco_bleu, coco_rouge_l, coco_tokenize, meteor
from gensys.metrics.inputs import MetricInputError
from gensys.models.captioner import build_captioner
from gensys.train import (
    ResumableLoader,
    Trainer,
    eval_batches,
    evaluate_loss,
    init_distributed,
    is_main_process,
    seed_everything,
)

log = logging.getLogger("gensys.caption")
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
DEFAULT_CKPT = "models/caption"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _parser(verb: str, doc: str, config: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gensys caption {verb}", description=doc, formatter_class=_Formatter)
    if config:
        p.add_argument("--config", default=None, help="YAML config (configs/caption/*.yaml)")
        p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
        p.add_argument("--data-dir", default=None, help="data root (default: $GENSYS_DATA, else repo data/)")
    return p


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)


def _load(args: argparse.Namespace) -> Config:
    return load_config(Config, args.config, list(args.overrides))


# ---------------------------------------------------------------------------------------------------------
# prepare


def tokenizer_path(cfg: Config, train_caps: dict[str, list[str]]) -> Path:
    """Where the tokenizer trained on these captions with these settings is cached."""
    key = json.dumps([cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency, sorted(train_caps.items())])
    return Path(cfg.data.cache_dir) / f"tokenizer_{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def prepare(cfg: Config, root: str | None = None) -> tuple[Tokenizer, SplitData, SplitData]:
    """Tokenizer (trained once on the normalised training captions) and the cached train / dev splits."""
    size = cfg.model.image_size + cfg.preprocess.crop_margin
    train_caps = load_split(cfg.data, cfg.data.train_split, root)
    tok_path = tokenizer_path(cfg, train_caps)
    if tok_path.is_file():
        tok = Tokenizer.load(tok_path)
    else:
        texts = [normalize_caption(c) for caps in train_caps.values() for c in caps]
        tok = train_bpe(texts, cfg.tokenizer.vocab_size, SPECIALS, cfg.tokenizer.min_frequency)
        tok.save(tok_path)
        log.info(
            "trained a %d-token BPE tokenizer on %d captions -> %s", tok.vocab_size, len(texts), tok_path
        )
    train = load_split_data(cfg.data, cfg.data.train_split, size, root, cfg.data.max_train_images)
    dev = load_split_data(cfg.data, cfg.data.dev_split, size, root, cfg.data.max_dev_images)
    return tok, train, dev


def prepare_main(argv: list[str]) -> int:
    """Index images and captions, train the BPE tokenizer, decode images once into the uint8 cache."""
    args = _parser("prepare", prepare_main.__doc__ or "").parse_args(argv)
    _setup_logging()
    cfg = _load(args)
    t0 = time.perf_counter()
    tok, train, dev = prepare(cfg, args.data_dir)
    summary = {
        "train_images": len(train.names),
        "train_captions": sum(map(len, train.captions)),
        "dev_images": len(dev.names),
        "dev_captions": sum(map(len, dev.captions)),
        "vocab_size": tok.vocab_size,
        "cache_dir": cfg.data.cache_dir,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary))
    return 0


# ---------------------------------------------------------------------------------------------------------
# train


def _settings(cfg: Config) -> dict[str, Any]:
    """What the predictor needs besides the weights; stored in config.json under "caption"."""
    return {
        "preprocess": dataclasses.asdict(cfg.preprocess),
        "decode": dataclasses.asdict(cfg.decode),
        "post": dataclasses.asdict(cfg.post),
    }


def score_captions(hyps: list[str], refs: list[list[str]], synonyms: bool = True) -> dict[str, float]:
    """CIDEr-D, BLEU-1..4, METEOR, ROUGE-L (coco-caption conventions: PTB tokens, lower case, no
    punctuation) of one caption per image against all its references."""
    h = [coco_tokenize(x) for x in hyps]
    r = [[coco_tokenize(x) for x in rs] for rs in refs]
    bleu = coco_bleu(h, r).details
    out = {"cider_d": cider_d(h, r).score, **{f"bleu_{k}": bleu[f"bleu_{k}"] for k in range(1, 5)}}
    try:
        out["meteor"] = meteor(h, r, synonyms=synonyms).score
    except MetricInputError:  # no WordNet database on this machine: exact + stem stages only
        out["meteor"] = meteor(h, r, synonyms=False).score
        out["meteor_without_synonyms"] = 1.0
    out["rouge_l"] = coco_rouge_l(h, r).score
    return out


def _eval_fn(cfg: Config, tok: Tokenizer, dev: SplitData):
    """Trainer eval_fn: dev loss (every caption), the image gain (loss with wrong images minus dev loss)
    and greedy CIDEr-D on the first dev images."""
    dev_set = CaptionSet(dev, tok, cfg.preprocess.max_caption_tokens)
    size, pre = cfg.model.image_size, cfg.preprocess
    collate = Collator(dev.images, size, pre.mean, pre.std, tok.pad_id, train=False)
    bs = cfg.eval.batch_size

    def run(model: Any) -> dict[str, float]:
        batches = eval_batches(dev_set, bs, collate, max_batches=cfg.train.eval_steps)
        out = evaluate_loss(model, batches, partial(caption_loss))
        batches = eval_batches(dev_set, bs, collate, max_batches=cfg.train.eval_steps)
        wrong = evaluate_loss(model, batches, mismatched_caption_loss)["val_loss"]
        out["image_gain"] = wrong - out["val_loss"]  # ~0: the decoder ignores the image
        n = min(cfg.eval.train_cider_images, len(dev.names))
        if n:
            device = next(model.parameters()).device
            pred = CaptionPredictor(model, tok, pre, cfg.decode, cfg.post, device=device, batch_size=bs)
            res = pred.run(pred.normalize(dev.images[:n]), beam=1, n_best=1, fairness=False)
            hyps = [nb[0]["raw"] if nb else "" for nb in res]
            refs = [[coco_tokenize(r) for r in rs] for rs in dev.captions[:n]]
            out["cider_d"] = cider_d([coco_tokenize(x) for x in hyps], refs).score
        return out

    return run


def export_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy a checkpoint as fp16 weights (config + tokenizer kept, no train_state): the shipped format."""
    model, config, tok = load_checkpoint(src)
    config = {k: v for k, v in config.items() if k not in ("gensys_format", "weights_dtype")}
    return save_checkpoint(dst, model, config, tok, dtype=torch.float16)


def train_main(argv: list[str]) -> int:
    """Train the CNN or ViT captioner (next-token cross-entropy); checkpoints go to train.out_dir."""
    p = _parser("train", train_main.__doc__ or "")
    p.add_argument(
        "--export", default=None, help="write the best checkpoint here in fp16 (e.g. models/caption)"
    )
    args = p.parse_args(argv)
    _setup_logging()
    cfg = _load(args)
    tok, train, dev = prepare(cfg, args.data_dir)
    cfg.model.vocab_size = tok.vocab_size
    if cfg.model.pos == "learned" and cfg.model.max_seq_len < cfg.preprocess.max_caption_tokens + 2:
        raise ConfigError(
            f"model.max_seq_len={cfg.model.max_seq_len} is shorter than preprocess.max_caption_tokens + 2"
        )
    seed_everything(cfg.train.seed)
    model = build_captioner(cfg.model)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s captioner: %.2fM parameters; %d train images, %d dev images",
             cfg.model.encoder, n_params / 1e6, len(train.names), len(dev.names))  # fmt: skip
    pre = cfg.preprocess
    train_set = CaptionSet(train, tok, pre.max_caption_tokens)
    collate = Collator(
        train.images, cfg.model.image_size, pre.mean, pre.std, tok.pad_id,
        train=True, hflip=pre.hflip, captions_per_image=pre.captions_per_image,
        tag_vocab=cfg.model.vocab_size if cfg.loss.tag_weight else 0,
        tag_ignore=(tok.bos_id, tok.eos_id, tok.pad_id),
    )  # fmt: skip
    env = init_distributed(cfg.train.parallel, cfg.train.device)  # torchrun: each dp rank takes its batches
    loader = ResumableLoader(
        train_set, cfg.train.micro_batch_size, collate, seed=cfg.train.seed,
        rank=env.dp_rank, world_size=env.dp_size,
    )  # fmt: skip
    trainer = Trainer(
        model,
        cfg.train,
        train_data=loader,
        loss_fn=partial(
            caption_loss, label_smoothing=cfg.train.label_smoothing, tag_weight=cfg.loss.tag_weight
        ),
        eval_fn=_eval_fn(cfg, tok, dev),
        model_config={
            "family": "captioner",
            "model": dataclasses.asdict(cfg.model),
            "caption": _settings(cfg),
        },
        tokenizer=tok,
    )
    summary = trainer.fit()
    summary["params"] = n_params
    export = args.export or cfg.export_dir
    if export and is_main_process():  # under torchrun, rank 0 alone writes the export
        src = summary["best"] or summary["last"]
        summary["exported"] = str(export_checkpoint(src, export))
    print(json.dumps(summary))
    return 0


# ---------------------------------------------------------------------------------------------------------
# eval


def _gender_support(results: list[list[dict[str, Any]]], refs: list[list[str]]) -> dict[str, Any]:
    """How often a gendered person noun agrees with the references, for nouns the fairness rule kept vs
    replaced: "supported" = at least one reference uses a noun of the same gender."""

    def genders(text: str) -> set[str]:
        return {PERSON_NOUNS[w][0] for w in coco_tokenize(text).split() if w in PERSON_NOUNS} - {"n"}

    kept, replaced = Counter(), Counter()
    for nb, rs in zip(results, refs):
        if not nb:
            continue
        ref_g = set().union(*(genders(r) for r in rs))
        changed = {c["word"].lower() for c in nb[0]["changes"] if c["kind"] in ("gender", "age")}
        for w in coco_tokenize(nb[0]["raw"]).split():
            if w in PERSON_NOUNS and PERSON_NOUNS[w][0] != "n":
                bucket = replaced if w in changed else kept
                bucket["n"] += 1
                bucket["supported"] += PERSON_NOUNS[w][0] in ref_g
    return {
        "kept_gendered_nouns": kept["n"],
        "kept_supported_by_refs": round(kept["supported"] / kept["n"], 4) if kept["n"] else None,
        "replaced_gendered_nouns": replaced["n"],
        "replaced_supported_by_refs": round(replaced["supported"] / replaced["n"], 4)
        if replaced["n"]
        else None,
    }


FAIRNESS_SWEEP = (0.0, 0.5, 0.6, 0.75, 0.9, 0.95, 1.01)


def _threshold_sweep(
    pred: CaptionPredictor, results: list[list[dict[str, Any]]], refs: list[list[str]]
) -> list[dict[str, float]]:
    """The fairness rule re-applied at other thresholds to the same beam outputs: how often it fires and
    CIDEr-D (0.0 = never fires; above 1 = every attribute word is neutralised)."""
    out = []
    for t in FAIRNESS_SWEEP:
        texts, fired = [], 0
        for nb in results:
            if not nb or "probs" not in nb[0]:
                texts.append(nb[0]["caption"] if nb else "")
                continue
            d = nb[0]
            res = postprocess(d["words"], d["positions"], d["probs"], lex=pred.lexicon, threshold=t,
                              blocklist=pred.blocklist if pred.post.offensive_filter else None)  # fmt: skip
            texts.append(res.text)
            fired += bool(res.changes)
        r = [[coco_tokenize(x) for x in rs] for rs in refs]
        cider = cider_d([coco_tokenize(x) for x in texts], r).score
        out.append({"threshold": t, "captions_changed_rate": round(fired / max(1, len(results)), 4),
                    "cider_d": round(cider, 4)})  # fmt: skip
    return out


def evaluate_checkpoint(
    ckpt: str | Path,
    data_cfg: DataConfig,
    split: str,
    root: str | None,
    out_dir: Path,
    *,
    beam: int = 3,
    max_images: int = 0,
    attention_examples: int = 4,
    threshold: float | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Caption a split with one checkpoint; metrics without and with the fairness rule, its firing rate,
    predictions JSONL and attention PNGs under `out_dir`."""
    pred = load_predictor(ckpt, batch_size=batch_size, fairness_threshold=threshold)
    size = pred.image_size + pred.pre.crop_margin
    data = load_split_data(data_cfg, split, size, root, max_images)
    t0 = time.perf_counter()
    results = pred.run(pred.normalize(data.images), beam=beam, n_best=1, fairness=True, keep_probs=True)
    seconds = time.perf_counter() - t0
    sweep = _threshold_sweep(pred, results, data.captions)
    for nb in results:  # the distributions were only needed for the sweep
        for d in nb:
            for k in ("words", "positions", "probs"):
                d.pop(k, None)
    plain = [nb[0]["plain"] if nb else "" for nb in results]
    final = [nb[0]["caption"] if nb else "" for nb in results]
    m_raw = score_captions(plain, data.captions)
    m_final = score_captions(final, data.captions)
    fired = [nb[0]["changes"] for nb in results if nb and nb[0]["changes"]]
    kinds = Counter(c["kind"] for ch in fired for c in ch)
    cfg = pred.model.cfg
    report = {
        "checkpoint": str(ckpt),
        "split": split,
        "images": len(data.names),
        "encoder": cfg.encoder,
        "enc_pos": cfg.enc_pos,
        "params": sum(p.numel() for p in pred.model.parameters()),
        "beam": beam,
        "metrics": m_raw,
        "metrics_after_fairness": m_final,
        "fairness": {
            "threshold": pred.post.fairness_threshold,
            "captions_changed": len(fired),
            "captions_changed_rate": round(len(fired) / max(1, len(results)), 4),
            "edits_by_kind": dict(kinds),
            "cider_d_delta": round(m_final["cider_d"] - m_raw["cider_d"], 4),
            **_gender_support(results, data.captions),
            "threshold_sweep": sweep,
        },
        "seconds": round(seconds, 1),
        "images_per_s": round(len(results) / max(seconds, 1e-9), 2),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"preds_{split}.jsonl", "w", encoding="utf-8") as f:
        for name, nb, refs in zip(data.names, results, data.captions):
            f.write(json.dumps({"image": name, **(nb[0] if nb else {}), "refs": refs}) + "\n")
    pngs = []
    for i in range(min(attention_examples, len(data.names))):
        if not results[i]:
            continue
        tokens = pred.tok.encode(normalize_caption(results[i][0]["raw"]))
        words = token_words(pred.tok, tokens)
        if not words:
            continue
        px = pred.normalize(data.images[i : i + 1])
        maps = word_attention(pred.model, px, tokens, [ps for _, ps in words], pred.tok.bos_id)
        img = center_crop(data.images[i], pred.image_size)
        path = out_dir / f"attention_{i:02d}_{Path(data.names[i]).stem}.png"
        pngs.append(str(save_attention_png(path, img, [w for w, _ in words], maps, results[i][0]["raw"])))
    report["attention_pngs"] = pngs
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def results_table(reports: list[dict[str, Any]]) -> str:
    """Markdown table of evaluation reports (one row per checkpoint)."""
    head = ("| checkpoint | encoder | positions | params | CIDEr-D | BLEU-1 | BLEU-4 | METEOR | ROUGE-L "
            "| CIDEr-D after fairness | captions changed |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in reports:
        m, f = r["metrics"], r["fairness"]
        lines.append(
            f"| {r['checkpoint']} | {r['encoder']} | {r['enc_pos']} | {r['params'] / 1e6:.2f}M "
            f"| {m['cider_d']:.3f} | {m['bleu_1']:.3f} | {m['bleu_4']:.3f} | {m['meteor']:.3f} "
            f"| {m['rouge_l']:.3f} | {r['metrics_after_fairness']['cider_d']:.3f} "
            f"| {f['captions_changed_rate']:.1%} |"
        )
    return "\n".join(lines)


def eval_main(argv: list[str]) -> int:
    """CIDEr-D, BLEU-1..4, METEOR, ROUGE-L on a split against all references, with and without the fairness
    rule; several --ckpt give one comparison table (CNN vs ViT, 1D vs 2D positions)."""
    p = _parser("eval", eval_main.__doc__ or "")
    p.add_argument("--ckpt", nargs="+", default=[DEFAULT_CKPT], help="checkpoint directories")
    p.add_argument("--split", default=None, help="split to score (default: eval.split of the config)")
    p.add_argument("--beam", type=int, default=None, help="beam width (default: the checkpoint's)")
    p.add_argument("--max-images", type=int, default=None, help="score only the first N images (0 = all)")
    p.add_argument("--threshold", type=float, default=None, help="fairness confidence threshold")
    p.add_argument("--out-dir", default=None, help="where reports go (default: eval.out_dir)")
    args = p.parse_args(argv)
    _setup_logging()
    cfg = _load(args)
    split = args.split or cfg.eval.split
    out_root = Path(args.out_dir or cfg.eval.out_dir)
    reports = []
    for i, ckpt in enumerate(args.ckpt):
        name = f"{i:02d}_{Path(ckpt).name}" if len(args.ckpt) > 1 else Path(ckpt).name
        beam = args.beam
        if beam is None:
            beam = int((read_ckpt_config(ckpt).get("caption") or {}).get("decode", {}).get("beam", 3))
        rep = evaluate_checkpoint(
            ckpt, cfg.data, split, args.data_dir, out_root / name,
            beam=beam, max_images=cfg.eval.max_images if args.max_images is None else args.max_images,
            attention_examples=cfg.eval.attention_examples, threshold=args.threshold,
            batch_size=cfg.eval.batch_size,
        )  # fmt: skip
        reports.append(rep)
        print(json.dumps({k: rep[k] for k in ("checkpoint", "metrics", "fairness", "images_per_s")}))
    table = results_table(reports)
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "table.md").write_text(table + "\n", encoding="utf-8")
    (out_root / "results.json").write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")
    print(table)
    return 0


# ---------------------------------------------------------------------------------------------------------
# predict


def _expand(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for s in paths:
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DataError(f"{p}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
            out.extend(found)
        else:
            out.append(p)
    return out


def predict_main(argv: list[str]) -> int:
    """Caption image files: one JSON line per image with its file name, caption and score."""
    p = _parser("predict", predict_main.__doc__ or "", config=False)
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="checkpoint directory")
    p.add_argument("--images", nargs="+", required=True, help="image files or folders of images")
    p.add_argument("--out", default="-", help="output JSONL file ('-' = stdout)")
    p.add_argument("--beam", type=int, default=3, help="beam width")
    p.add_argument("--n-best", type=int, default=1, help="captions per image (>1 adds an 'nbest' list)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="a bad image stops the run (nothing written) or gets an 'error' line")  # fmt: skip
    p.add_argument("--no-fairness", action="store_true", help="keep gender/age/ethnicity words as generated")
    p.add_argument("--threshold", type=float, default=None, help="fairness confidence threshold")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = p.parse_args(argv)
    pred = load_predictor(
        args.ckpt,
        device=args.device,
        batch_size=args.batch_size,
        fairness=False if args.no_fairness else None,
        fairness_threshold=args.threshold,
    )
    pred.generation_config(args.beam, args.n_best)  # bad --beam / --n-best before reading any image
    lines: list[str] = []
    failed = 0
    files = _expand(args.images)
    for start in range(0, len(files), args.batch_size):
        chunk = files[start : start + args.batch_size]
        ok, images = [], []
        for f in chunk:
            try:
                images.append(open_image(f, pred.max_pixels))
                ok.append(f)
            except DataError as e:
                if args.on_error == "fail":
                    raise
                failed += 1
                print(f"gensys caption predict: skipped: {e}", file=sys.stderr)
                lines.append(json.dumps({"image": str(f), "error": str(e)}))
        if not images:
            continue
        for f, nb in zip(ok, pred.caption(images, beam=args.beam, n_best=args.n_best)):
            rec: dict[str, Any] = {"image": str(f), "caption": nb[0]["caption"], "score": nb[0]["score"]}
            if args.n_best > 1:
                rec["nbest"] = nb
            lines.append(json.dumps(rec, ensure_ascii=False))
    text = "".join(line + "\n" for line in lines)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, encoding="utf-8") as tmp:
            tmp.write(text)
        os.replace(tmp.name, out)
    return 2 if failed else 0


__all__ = [
    "eval_main",
    "evaluate_checkpoint",
    "export_checkpoint",
    "predict_main",
    "prepare",
    "prepare_main",
    "results_table",
    "score_captions",
    "train_main",
]
