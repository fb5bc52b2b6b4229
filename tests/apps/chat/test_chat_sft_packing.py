"""Packed SFT: the first-fit packer keeps every example whole and once, with its prompt unlabelled; a few
steps of the SFT stage run end to end on packed rows (and on one example per row with sft.pack=false)."""

from __future__ import annotations

import dataclasses
import math
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from chat_train_testdata import WORDS, write_data  # noqa: E402

from gensys.apps.chat import sft  # noqa: E402
from gensys.apps.chat.common import load_lm, stage_checkpoint  # noqa: E402
from gensys.apps.chat.data import ChatExample, collate_lm, pack_examples, read_sft  # noqa: E402
from gensys.apps.chat.recipe import ensure_tokenizer, load_chat_config  # noqa: E402
from gensys.apps.chat.template import render_prompt, sft_messages  # noqa: E402
from gensys.checkpoint import save_checkpoint  # noqa: E402
from gensys.data.batching import IGNORE_INDEX  # noqa: E402
from gensys.data.tokenizer import train_bpe  # noqa: E402
from gensys.models.decoder_lm import DecoderLM  # noqa: E402
from gensys.train import lm_loss  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tok():
    texts = [f"Say the word {w} twice. {w} {w}. I am sorry, I cannot help with that." for w in WORDS] * 5
    return train_bpe(texts, vocab_size=300)


def _examples(n: int, seed: int = 0) -> list[ChatExample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))
        reply = " ".join(rng.choices(WORDS, k=rng.randint(1, 10)))
        out.append(ChatExample(f"ex{i}", sft_messages(f"Repeat: {words}"), reply))
    return out


def test_packer_keeps_every_example_whole_once_and_within_max_len(tok):
    max_len, row_len = 64, 128  # examples of up to 64 tokens in rows of 128
    examples = _examples(60)
    items = sft.encode_examples(tok, examples, max_len)
    rows = pack_examples(items, row_len)

    assert len(rows) < len(items) // 2  # it packs
    assert all(len(r["input_ids"]) <= row_len for r in rows)
    # First-fit: no two rows are both at most half full (the later one's examples would have fitted).
    assert sum(len(r["input_ids"]) <= row_len // 2 for r in rows) <= 1

    seen = []
    for r in rows:
        seg = r["segment_ids"]
        assert len(seg) == len(r["input_ids"]) == len(r["labels"])
        # contiguous runs numbered 1, 2, ..., k in order
        starts = [t for t in range(len(seg)) if t == 0 or seg[t] != seg[t - 1]]
        assert [seg[t] for t in starts] == list(range(1, len(starts) + 1))
        for s, e in zip(starts, starts[1:] + [len(seg)]):
            seen.append((tuple(r["input_ids"][s:e]), tuple(r["labels"][s:e])))
    want = [(tuple(it["input_ids"]), tuple(it["labels"])) for it in items]
    assert sorted(seen) == sorted(want)  # every example exactly once, unchanged

    # prompt tokens carry no label; each segment's last token predicts nothing in the next example
    by_ids = {tuple(it["input_ids"]): ex for it, ex in zip(items, examples)}
    for ids, labels in seen:
        n_prompt = len(render_prompt(tok, by_ids[ids].messages, max_len // 2))  # as `supervised_example`
        assert set(labels[: n_prompt - 1]) == {IGNORE_INDEX}
        assert labels[n_prompt - 1 : -1] == ids[n_prompt:]  # the reply (and its <|end|>) is labelled
        assert labels[-1] == IGNORE_INDEX

    batch = collate_lm(rows[:3], tok.pad_id)
    assert batch["segment_ids"].shape == batch["input_ids"].shape
    assert (batch["segment_ids"][batch["labels"] != IGNORE_INDEX] > 0).all()  # padding is segment 0

    with pytest.raises(ValueError, match="max_len"):
        pack_examples(items, max_len=8)


@pytest.mark.parametrize("pack", [True, False])
def test_sft_stage_runs_on_packed_rows(tmp_path, monkeypatch, pack):
    data = write_data(tmp_path / "data")
    overrides = [
        f"data.data_dir={data}",
        f"run_dir={tmp_path / 'run'}",
        "stage=sft",
        f"sft.pack={str(pack).lower()}",
        "sft.train.max_steps=6",
        "sft.train.warmup_steps=1",
        "sft.train.lr=1e-2",
        "sft.train.eval_every=3",
    ]
    cfg = load_chat_config(ROOT / "configs/chat/tiny.yaml", overrides)
    tok = ensure_tokenizer(cfg)
    torch.manual_seed(0)
    init = DecoderLM(dataclasses.replace(cfg.model, vocab_size=tok.vocab_size))
    init_dir = tmp_path / "init"
    save_checkpoint(init_dir, init, {"family": "decoder_lm", "model": dataclasses.asdict(init.cfg)}, tok)
    cfg.sft.init_from = str(init_dir)

    seen = []  # what the training loader and the dev evaluation handed to the model

    def spy(items, pad_id):
        batch = collate_lm(items, pad_id)
        seen.append(batch)
        return batch

    monkeypatch.setattr(sft, "collate_lm", spy)
    figures = sft.run(cfg, tok)

    assert figures["steps"] == 6
    assert (figures["train_rows"] < figures["train_examples"]) == pack
    assert math.isfinite(figures["final_train_loss"]) and math.isfinite(figures["dev_loss"])
    packed = [b for b in seen if "segment_ids" in b]
    if pack:
        assert packed and max(int(b["segment_ids"].max()) for b in packed) > 1
        assert len(packed) < len(seen)  # dev evaluation stays one example per row
    else:
        assert not packed

    # The trained model answers the training examples better than the random init (reply tokens only).
    train_ex = read_sft(cfg.data)[0][:16]
    batch = collate_lm(sft.encode_examples(tok, train_ex, cfg.sft.max_len), tok.pad_id)
    trained, _ = load_lm(stage_checkpoint(cfg, "sft"))
    with torch.no_grad():
        before = lm_loss(init.eval(), batch)
        after = lm_loss(trained.eval(), batch)
    assert float(after[0] / after[1]) < float(before[0] / before[1]) - 0.5
