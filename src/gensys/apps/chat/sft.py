"""Stage 2, supervised fine-tuning: instruction -> response in the chat template, loss on the reply only.

Each example is `<bos> <|user|> instruction [+ input] <|end|> <|assistant|> response <|end|>`; labels are
IGNORE_INDEX over the prompt, so the model is trained to answer, not to write user turns.

With `sft.pack` (the default) whole examples are packed first-fit into rows of `sft.max_len` tokens
(`data.pack_examples`) and each row carries `segment_ids`: `DecoderLM` then attends causally *within* each
example only and restarts positions at 0 per example, so an example's logits are exactly those it would get
alone, with far less padding. Labels never cross an example boundary, and the loss is still normalised by the
number of assistant tokens (the trainer's token count). `sft.pack=false` gives each example its own row
(right-padded; batches grouped by length so padding stays small). The dev loss is computed unpacked.
Dev split: a stable hash of each example id (`data.sft_dev_fraction`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from gensys.apps.chat.common import (
    init_checkpoint,
    last_value,
    load_lm,
    log,
    mark_done,
    stage_train_config,
)
from gensys.apps.chat.config import Config
from gensys.apps.chat.data import BucketedLoader, ChatExample, collate_lm, pack_examples, read_sft
from gensys.apps.chat.template import supervised_example
from gensys.data.tokenizer import Tokenizer
from gensys.train import Trainer, lm_eval_fn, seed_everything


def encode_examples(tok: Tokenizer, examples: list[ChatExample], max_len: int) -> list[dict[str, list[int]]]:
    """Template + labels of each example (see `template.supervised_example`)."""
    out = []
    for ex in examples:
        ids, labels = supervised_example(tok, ex.messages, ex.response, max_len)
        out.append({"input_ids": ids, "labels": labels})
    return out


def run(cfg: Config, tok: Tokenizer) -> dict[str, Any]:
    """Fine-tune the pretrained LM on the SFT pairs; best/ = lowest dev loss (assistant tokens)."""
    sc = cfg.sft
    tcfg = stage_train_config(cfg, "sft", sc.train)
    init = init_checkpoint(cfg, "sft", sc.init_from)
    train_ex, dev_ex = read_sft(cfg.data, sc.system_prompt)
    train = encode_examples(tok, train_ex, sc.max_len)
    dev = encode_examples(tok, dev_ex, sc.max_len)
    n_target = sum(sum(t != -100 for t in it["labels"]) for it in train)
    log(f"sft: from {init}; {len(train)} train / {len(dev)} dev examples, {n_target:,} reply tokens")
    rows = pack_examples(train, sc.max_len) if sc.pack else train
    if sc.pack:
        fill = sum(len(r["input_ids"]) for r in rows) / (len(rows) * sc.max_len)
        log(f"sft: packed into {len(rows)} rows of {sc.max_len} tokens ({fill:.0%} filled)")
    seed_everything(cfg.seed)
    model, _ = load_lm(init)
    collate = partial(collate_lm, pad_id=tok.pad_id)
    loader = BucketedLoader(
        rows, tcfg.micro_batch_size, collate, lambda it: len(it["input_ids"]), seed=cfg.seed
    )
    eval_fn = lm_eval_fn(dev, tcfg.micro_batch_size, collate, max_batches=tcfg.eval_steps)
    trainer = Trainer(model, tcfg, train_data=loader, eval_fn=eval_fn, tokenizer=tok)
    summary = trainer.fit()
    figures = {
        "init_from": str(init),
        "steps": trainer.step,
        "train_examples": len(train),
        "train_rows": len(rows),
        "dev_examples": len(dev),
        "final_train_loss": summary["loss"],
        "dev_loss": last_value(summary["metrics"], "val_loss"),
        "dev_ppl": last_value(summary["metrics"], "val_ppl"),
        "best_dev_loss": summary["best_metric"],
    }
    log(f"sft: dev loss {figures['dev_loss']:.3f} (best {figures['best_dev_loss']})")
    mark_done(cfg, "sft", figures)
    return figures
