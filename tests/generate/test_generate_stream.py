"""Streaming: incremental detokenisation over byte-level BPE; events add up to `generate`'s output."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

from gensys.generate import GenerationConfig, IncrementalDetokenizer, generate, stream
from gensys.models.convert import model_from_hf

TEXT = [
    "Café crème, naïve façade. Smørrebrød og æbleskiver.",
    "日本語のテキストと中文文本，还有한국어 문장.",
    "Emoji 🙂🚀 and math ∑∫√ and arrows → ← ↔.",
    "Plain ASCII words: the quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    # A small vocabulary (bytes + a few merges) keeps most non-ASCII characters split across tokens.
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(TEXT * 5, trainer)
    return t


@pytest.fixture(scope="module")
def lm(tok):
    torch.manual_seed(5)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=128,
        initializer_range=0.2,
    )
    return model_from_hf(LlamaForCausalLM(cfg).eval())


def _detok(tok, ids):
    d = IncrementalDetokenizer(tok)
    deltas = [d.push(i) for i in ids]
    return deltas, d.flush()


def test_detokenizer_holds_partial_utf8_and_adds_up(tok):
    for line in TEXT:
        ids = tok.encode(line).ids
        deltas, rest = _detok(tok, ids)
        assert "".join(deltas) + rest == tok.decode(ids) == line
        assert rest == ""
        assert not any("\ufffd" in d for d in deltas)
    # The multi-byte lines really do split characters across tokens (some pushes release nothing).
    cjk = tok.encode(TEXT[1]).ids
    assert "" in _detok(tok, cjk)[0]
    assert len(cjk) > len(TEXT[1]) // 2


def test_detokenizer_on_arbitrary_ids_matches_full_decode(tok):
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids = torch.randint(0, tok.get_vocab_size(), (40,), generator=g).tolist()
        deltas, rest = _detok(tok, ids)
        assert "".join(deltas) + rest == tok.decode(ids)


def _prompt(tok, *lines: str) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [tok.encode(s).ids for s in lines]
    t = max(map(len, rows))
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    mask = torch.zeros(len(rows), t, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, t - len(r) :], mask[i, t - len(r) :] = torch.tensor(r), 1
    return ids, mask


@pytest.mark.parametrize(
    "cfg",
    [
        GenerationConfig(max_new_tokens=24),
        GenerationConfig(strategy="sample", max_new_tokens=24, seed=3, temperature=1.5),
    ],
)
def test_stream_adds_up_to_generate(tok, lm, cfg):
    ids, mask = _prompt(tok, "Café ", "日本語の")
    cfg = cfg.replace(eos_token_id=tok.encode("。").ids[-1], pad_token_id=0)
    events = list(stream(lm, ids, mask, config=cfg, tokenizer=tok))
    out = events[-1].output
    assert events[-1].done and out is not None
    assert out.texts == generate(lm, ids, mask, config=cfg, tokenizer=tok).texts
    for row in range(2):
        streamed = [e.token_ids[row] for e in events[:-1] if e.token_ids[row] is not None]
        assert streamed == out.nbest[row][0].tokens
        text = "".join(e.text_deltas[row] for e in events)
        assert text == out.texts[row]


def test_stream_never_leaks_a_stop_string(tok, lm):
    ids, mask = _prompt(tok, "The quick ")
    free = generate(lm, ids, mask, config=GenerationConfig(max_new_tokens=30), tokenizer=tok).texts[0]
    stop = free[10:13]
    cfg = GenerationConfig(max_new_tokens=30, stop_strings=[stop])
    events = list(stream(lm, ids, mask, config=cfg, tokenizer=tok))
    pieces = [e.text_deltas[0] for e in events]
    assert "".join(pieces) == events[-1].output.texts[0] == free[: free.index(stop)]
    sent = ""
    for p in pieces:  # at no point has a prefix containing the stop string been sent
        sent += p
        assert stop not in sent


def test_beam_stream_reports_best_so_far(tok, lm):
    ids, mask = _prompt(tok, "Emoji ", "Plain ASCII")
    cfg = GenerationConfig(
        strategy="beam", num_beams=3, max_new_tokens=10, eos_token_id=tok.encode(".").ids[0]
    )
    events = list(stream(lm, ids, mask, config=cfg, tokenizer=tok))
    out = events[-1].output
    steps = events[:-1]
    assert all(e.hypotheses is not None and len(e.hypotheses) == 2 for e in steps)
    assert [len(h) for h in steps[0].hypotheses] == [1, 1]
    for row in range(2):
        assert steps[-1].hypotheses[row] == out.nbest[row][0].tokens
        assert steps[-1].texts[row] == out.texts[row]
        assert steps[-1].scores[row] == pytest.approx(out.nbest[row][0].score)
    again = generate(lm, ids, mask, config=cfg, tokenizer=tok)
    assert torch.equal(out.sequences, again.sequences) and out.texts == again.texts
