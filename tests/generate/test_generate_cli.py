"""`gensys generate`: a real checkpoint directory in, the same text and scores as the Python API out."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from gensys.checkpoint import save_checkpoint
from gensys.data.tokenizer import train_bpe
from gensys.generate import GenerationConfig, GenerationConfigError, generate
from gensys.generate.cli import _parser, generate_main
from gensys.models.decoder_lm import DecoderLM, llama_config
from gensys.models.seq2seq import Seq2Seq, marian_config

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "thanks for the note, see you soon"] * 20


@pytest.fixture(scope="module")
def tok():
    return train_bpe(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def lm_ckpt(tmp_path_factory, tok):
    torch.manual_seed(0)
    cfg = llama_config(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                       init_std=0.2)  # fmt: skip
    model = DecoderLM(cfg).eval()
    meta = {"family": "decoder_lm", "model": asdict(cfg)}
    path = save_checkpoint(tmp_path_factory.mktemp("ck") / "lm", model, meta, tokenizer=tok)
    return path, model


def _run(capsys, argv: list[str]) -> str:
    assert generate_main(argv) == 0
    return capsys.readouterr().out


def test_cli_prints_the_api_text(capsys, lm_ckpt, tok):
    path, model = lm_ckpt
    out = _run(
        capsys,
        ["--ckpt", str(path), "--prompt", "the cat", "--prompt", "thanks for", "--max-new-tokens", "8"],
    )
    rows = [tok.encode("the cat"), tok.encode("thanks for")]
    t = max(map(len, rows))
    ids = torch.tensor([[tok.pad_id] * (t - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (t - len(r)) + [1] * len(r) for r in rows])
    cfg = GenerationConfig(max_new_tokens=8, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    api = generate(model, ids, mask, config=cfg, tokenizer=tok)
    assert out.splitlines() == api.texts


def test_cli_json_beam_nbest(capsys, lm_ckpt, tok):
    path, model = lm_ckpt
    argv = ["--ckpt", str(path), "--prompt", "a dog", "--strategy", "beam", "--num-beams", "4", "--json",
            "--num-return-sequences", "3", "--length-penalty", "0.7", "--max-new-tokens", "6"]  # fmt: skip
    res = json.loads(_run(capsys, argv))
    seqs = res[0]["sequences"]
    assert len(seqs) == 3 and res[0]["prompt"] == "a dog"
    cfg = GenerationConfig(strategy="beam", num_beams=4, num_return_sequences=3, length_penalty=0.7,
                           max_new_tokens=6, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)  # fmt: skip
    api = generate(model, torch.tensor([tok.encode("a dog")]), config=cfg, tokenizer=tok)
    assert [s["tokens"] for s in seqs] == [h.tokens for h in api.nbest[0]]
    assert [s["score"] for s in seqs] == pytest.approx([h.score for h in api.nbest[0]])
    assert seqs[0]["score"] >= seqs[1]["score"] >= seqs[2]["score"]


def test_cli_stream_and_seeded_sampling(capsys, lm_ckpt):
    path, _ = lm_ckpt
    base = ["--ckpt", str(path), "--prompt", "the", "--strategy", "sample", "--seed", "5", "--top-k", "20",
            "--max-new-tokens", "10"]  # fmt: skip
    plain = _run(capsys, base)
    assert _run(capsys, base) == plain
    assert _run(capsys, [*base, "--stream"]) == plain


def test_cli_rejects_a_knob_that_does_not_apply(lm_ckpt):
    path, _ = lm_ckpt
    with pytest.raises(GenerationConfigError, match="top_k|TopK"):
        generate_main(["--ckpt", str(path), "--prompt", "the", "--top-k", "5"])


def test_cli_help_lists_every_knob():
    text = _parser().format_help()
    for field in GenerationConfig.__dataclass_fields__:
        from_tokenizer = ("eos_token_id", "pad_token_id", "decoder_start_token_id")
        as_text = ("bad_words_ids", "stop_strings", "penalize_prompt", "stop_token_ids")
        if field in from_tokenizer + as_text:
            continue  # taken from the tokenizer or given as text (--bad-words, --stop, --no-penalize-prompt)
        assert "--" + field.replace("_", "-") in text, field
    assert "--bad-words" in text and "--stop" in text and "--no-penalize-prompt" in text


def test_cli_translates_with_a_seq2seq_checkpoint(capsys, tmp_path, tok):
    torch.manual_seed(1)
    cfg = marian_config(
        vocab_size=tok.vocab_size, d_model=32, n_heads=4, n_enc_layers=1, n_dec_layers=1, d_ff=64
    )
    model = Seq2Seq(cfg).eval()
    path = save_checkpoint(tmp_path / "mt", model, {"family": "seq2seq", "model": asdict(cfg)}, tokenizer=tok)
    out = _run(capsys, ["--ckpt", str(path), "--prompt", "the cat sat", "--max-new-tokens", "5", "--json"])
    src = torch.tensor([tok.encode("the cat sat", add_eos=True)])
    gcfg = GenerationConfig(max_new_tokens=5, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
                            decoder_start_token_id=tok.bos_id)  # fmt: skip
    api = generate(model, None, config=gcfg, encoder_inputs=(src, torch.ones_like(src)),
                   memory_mask=torch.ones_like(src), tokenizer=tok)  # fmt: skip
    assert json.loads(out)[0]["sequences"][0]["tokens"] == api.nbest[0][0].tokens
