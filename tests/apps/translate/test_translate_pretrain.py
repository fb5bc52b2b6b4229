"""The pretraining switch: MLM pretraining runs first and fine-tuning starts from its weights (or from
`init_from`); without either, fine-tuning starts from a fresh initialisation."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gensys.apps.translate.config import Config
from gensys.apps.translate.recipe import train
from gensys.checkpoint import load_weights
from gensys.config import load_config
from gensys.train.monitor import read_metrics

TINY = Path(__file__).resolve().parents[3] / "configs/translate/tiny.yaml"
FAST = ["val_bleu_sentences=0", "data.max_val_pairs=8", "train.max_steps=0", "pretrain.warmup_steps=2"]


def _same(a, b) -> bool:
    wa, wb = load_weights(a), load_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_finetuning_starts_from_pretrained_weights(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(Config, TINY, [f"train.out_dir={out}", "pretrain.steps=4", "train.log_every=1", *FAST])
    train(cfg)
    pre = out / "pretrain" / "last"
    assert json.loads((pre / "config.json").read_text())["translate"]["stage"] == "pretrain"
    records = read_metrics(out / "pretrain" / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert any("val_loss" in r for r in records)  # MLM validation loss
    # Zero fine-tuning steps: the fine-tuned checkpoint holds exactly the pretrained weights.
    assert _same(pre, out / "last")

    # init_from (pretrain.steps=0) starts from given weights; a plain run from fresh ones.
    cfg2 = load_config(Config, TINY, [f"train.out_dir={tmp_path / 'b'}", f"init_from={pre}", *FAST])
    cfg2.tokenizer.path = str(out / "tokenizer.json")
    train(cfg2)
    assert _same(pre, tmp_path / "b" / "last")
    cfg3 = load_config(Config, TINY, [f"train.out_dir={tmp_path / 'c'}", *FAST])
    cfg3.tokenizer.path = str(out / "tokenizer.json")
    train(cfg3)
    assert not _same(pre, tmp_path / "c" / "last")
    assert not (tmp_path / "c" / "pretrain").exists()
