"""Translate data glue: MLM masking statistics, batch layouts, token-budget batching, readers, configs."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from gensys.apps.translate.config import Config, DataConfig
from gensys.apps.translate.data import (
    TokenBatchLoader,
    collate_mlm,
    collate_pairs,
    mask_tokens,
    read_pairs,
)
from gensys.config import ConfigError, load_config
from gensys.data.batching import IGNORE_INDEX, pad_batch
from gensys.data.tokenizer import train_bpe
from gensys.errors import DataError

ROOT = Path(__file__).resolve().parents[3]
SPECIAL = [0, 1, 2, 3, 4]  # pad bos eos unk mask in a tokenizer trained by gensys


def _rows(n: int, g: torch.Generator) -> list[list[int]]:
    """Random sentences of 1..30 ordinary tokens (ids >= 10), some specials inside, <eos> at the end."""
    rows = []
    for _ in range(n):
        k = int(torch.randint(1, 31, (1,), generator=g))
        ids = torch.randint(10, 500, (k,), generator=g).tolist()
        if k > 3:
            ids[1] = 1  # a <bos> and an <unk> inside the sentence must never be masked either
            ids[2] = 3
        rows.append([*ids, 2])
    return rows


@pytest.mark.parametrize("rate", [0.15, 0.35, 0.5])
def test_mask_rate_and_specials(rate):
    g = torch.Generator().manual_seed(0)
    rows = _rows(3000, g)
    ids, real = pad_batch(rows, 0)  # (B, T)
    masked, chosen = mask_tokens(ids, real, rate, 4, SPECIAL, g)
    maskable = real & (ids >= 10)
    # Never a special token or padding; masked positions hold <mask>, all others are unchanged.
    assert not (chosen & ~maskable).any()
    assert (masked[chosen] == 4).all()
    assert torch.equal(masked[~chosen], ids[~chosen])
    # Per row: floor or ceil of rate * maskable tokens; overall: the rate itself.
    n = maskable.sum(1).float()
    k = chosen.sum(1).float()
    assert ((k == torch.floor(rate * n)) | (k == torch.ceil(rate * n))).all()
    assert abs(float(k.sum() / n.sum()) - rate) < 0.01
    # Short sentences get their share too (stochastic rounding, not floor): 1-token rows are masked ~rate.
    one = n == 1
    assert abs(float(k[one].mean()) - rate) < 0.12
    # Every maskable position is equally likely: the first and last ordinary token of long rows alike.
    long = n >= 20
    first = chosen[long, 0].float().mean()
    last_idx = (real[long].sum(1) - 2).clamp_min(0)  # the token before <eos>
    last = chosen[long].gather(1, last_idx[:, None]).float().mean()
    assert abs(float(first) - rate) < 0.06 and abs(float(last) - rate) < 0.06


def test_mask_rate_edges():
    g = torch.Generator().manual_seed(1)
    ids, real = pad_batch(_rows(50, g), 0)
    _, none = mask_tokens(ids, real, 0.0, 4, SPECIAL, g)
    assert not none.any()
    masked, all_ = mask_tokens(ids, real, 1.0, 4, SPECIAL, g)
    assert torch.equal(all_, real & (ids >= 10))
    assert set(masked[real].unique().tolist()) <= {1, 2, 3, 4}
    with pytest.raises(ValueError):
        mask_tokens(ids, real, 1.5, 4, SPECIAL, g)


def test_collate_layouts():
    tok = train_bpe(["a small dog runs", "ein kleiner Hund rennt", "two cats", "zwei Katzen"], 300)
    eos, bos, pad, mask = tok.eos_id, tok.bos_id, tok.pad_id, tok.mask_id
    s1, s2 = tok.encode("two cats", add_eos=True), tok.encode("a small dog runs", add_eos=True)
    t1, t2 = tok.encode("zwei Katzen", add_eos=True), tok.encode("ein kleiner Hund rennt", add_eos=True)
    b = collate_pairs([(s1, t1), (s2, t2)], pad, bos)
    assert b["src_ids"][0, : len(s1)].tolist() == s1 and b["src_mask"][0].sum() == len(s1)
    assert b["tgt_in"][1, : len(t2)].tolist() == [bos, *t2[:-1]]
    assert b["labels"][1, : len(t2)].tolist() == t2
    assert (b["labels"][0, len(t1) :] == IGNORE_INDEX).all()

    g = torch.Generator().manual_seed(0)
    m = collate_mlm([s2, s1], pad, bos, mask, 0.5, sorted(tok.special_ids), g)
    # Decoder: the whole unmasked sentence behind <bos>; labels: every token and <eos>.
    assert m["tgt_in"][0, : len(s2)].tolist() == [bos, *s2[:-1]]
    assert m["labels"][0, : len(s2)].tolist() == s2
    # Encoder: the same sentence with some tokens replaced by <mask>, never its <eos>.
    enc = m["src_ids"][0, : len(s2)].tolist()
    assert enc[-1] == eos and mask in enc
    assert all(e in (o, mask) for e, o in zip(enc, s2))


def test_token_batches_respect_budget_cover_epoch_and_resume():
    g = torch.Generator().manual_seed(0)
    data = [(r, r[: max(1, len(r) // 2)]) for r in _rows(500, g)]

    def collate(items, gen):
        return {"items": items, "draw": int(torch.randint(0, 10**9, (1,), generator=gen))}

    loader = TokenBatchLoader(data, 200, collate, seed=3)
    epoch = [next(loader) for _ in range(len(loader))]
    for b in epoch:
        assert len(b["items"]) * max(max(len(s), len(t)) for s, t in b["items"]) <= 200
    seen = sorted(id(x) for b in epoch for x in b["items"])
    assert seen == sorted(id(x) for x in data)  # every example exactly once per epoch

    # Resume mid-epoch: the same batches (and collate randomness) as an uninterrupted loader.
    a = TokenBatchLoader(data, 200, collate, seed=3)
    for _ in range(7):
        next(a)
    b = TokenBatchLoader(data, 200, collate, seed=3)
    b.load_state_dict(a.state_dict())
    for _ in range(len(a) + 3):  # across the epoch boundary too
        x, y = next(a), next(b)
        assert [id(i) for i in x["items"]] == [id(i) for i in y["items"]] and x["draw"] == y["draw"]
    # A new epoch is a new order.
    e0 = [[id(i) for i in bb["items"]] for bb in epoch]
    e1 = [[id(i) for i in next(loader)["items"]] for _ in range(len(loader))]
    assert e0 != e1
    with pytest.raises(ValueError):
        TokenBatchLoader(data, 5, collate)  # smaller than the longest example


def test_user_corpus_files(tmp_path):
    src, tgt = tmp_path / "train.en.gz", tmp_path / "train.xx"
    with gzip.open(src, "wt", encoding="utf-8") as f:
        f.write("Hello world.\n\nGood night.\n")
    tgt.write_text("Hallo Welt.\nnur Ziel\nGute Nacht.\n", encoding="utf-8")
    data = DataConfig(pair="en-xx", train_src=str(src), train_tgt=str(tgt))
    # Pairs with an empty side are dropped; gzip is read transparently.
    assert read_pairs(data, "train") == [("Hello world.", "Hallo Welt."), ("Good night.", "Gute Nacht.")]
    tgt.write_text("Hallo Welt.\n", encoding="utf-8")
    with pytest.raises(DataError, match="differ in length"):
        read_pairs(data, "train")
    with pytest.raises(DataError, match="together"):
        read_pairs(DataConfig(train_src=str(src)), "train")
    with pytest.raises(DataError, match="unknown split"):
        read_pairs(DataConfig(), "test_2099")


def test_multi30k_pairs_are_aligned():
    de = read_pairs(DataConfig(pair="en-de"), "val")
    fr = read_pairs(DataConfig(pair="en-fr"), "val")
    assert len(de) == len(fr) == 1014
    assert [s for s, _ in de] == [s for s, _ in fr]


@pytest.mark.parametrize("name", ["tiny", "demo", "quality"])
def test_shipped_configs_load(name):
    cfg = load_config(Config, ROOT / f"configs/translate/{name}.yaml")
    assert cfg.data.src_lang == "en" and cfg.data.tgt_lang == "de"
    assert cfg.model.tie_embeddings
    if name != "tiny":
        assert cfg.pretrain.steps > 0 and cfg.train.label_smoothing == pytest.approx(0.1)
        # demo keeps the best greedy val BLEU; quality the best val loss (its 200-sentence BLEU was too noisy)
        metric = {"demo": ("val_bleu", "max"), "quality": ("val_loss", "min")}[name]
        assert (cfg.train.early_stop_metric, cfg.train.early_stop_mode) == metric


def test_config_errors():
    with pytest.raises(ConfigError, match="pair"):
        load_config(Config, None, ["data.pair=english"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(Config, None, ["pretrain.mask_rat=0.2"])
