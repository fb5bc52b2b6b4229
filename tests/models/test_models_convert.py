"""`gensys convert from-hf / to-hf` on tiny random HF GPT-2 and Llama directories (no download)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.utils import logging as hf_logging

from gensys.checkpoint import load_checkpoint, save_checkpoint
from gensys.models.convert import convert_main
from gensys.models.decoder_lm import DecoderLM, DecoderLMConfig

hf_logging.set_verbosity_error()
V = 64


def _hf_model(arch: str, tied: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=V,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=32,
            tie_word_embeddings=tied,
            bos_token_id=1,
        )
        return GPT2LMHeadModel(cfg).eval()
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def _write_tokenizer(path) -> None:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(20)}}
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(path / "tokenizer.json"))


@pytest.mark.parametrize("arch, tied", [("gpt2", True), ("gpt2", False), ("llama", False), ("llama", True)])
def test_from_hf_then_to_hf_preserves_logits_and_weights_exactly(tmp_path, arch, tied):
    hf = _hf_model(arch, tied)
    hf_dir, ckpt, back = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "back"
    hf.save_pretrained(hf_dir)
    _write_tokenizer(hf_dir)
    ids = torch.randint(0, V, (2, 7))

    assert convert_main(["from-hf", str(hf_dir), str(ckpt)]) == 0
    model, config, tokenizer = load_checkpoint(ckpt)
    assert config["family"] == "decoder_lm" and isinstance(model, DecoderLM)
    assert model.cfg.tie_embeddings == tied
    assert tokenizer is not None and tokenizer.bos_id == 1
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-5, rtol=0)

    assert convert_main(["to-hf", str(ckpt), str(back)]) == 0
    hf_back = AutoModelForCausalLM.from_pretrained(back).eval()
    assert type(hf_back) is type(hf)
    with torch.no_grad():
        torch.testing.assert_close(hf_back(ids).logits, hf(ids).logits, atol=1e-5, rtol=0)
    # round trip: every stored HF tensor comes back bit-identical
    original, returned = (
        load_file(str(hf_dir / "model.safetensors")),
        load_file(str(back / "model.safetensors")),
    )
    assert set(returned) == set(original)
    for k in original:
        assert torch.equal(original[k], returned[k]), k
    assert json.loads((back / "tokenizer.json").read_text())["model"]["vocab"]["w0"] == 3
    assert AutoTokenizer.from_pretrained(back)("w1 w2")["input_ids"] == [4, 5]


def test_checkpoint_round_trip_is_exact(tmp_path):
    hf = _hf_model("llama", False)
    hf.save_pretrained(tmp_path / "hf")
    assert convert_main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "a")]) == 0
    assert convert_main(["to-hf", str(tmp_path / "a"), str(tmp_path / "hf2")]) == 0
    assert convert_main(["from-hf", str(tmp_path / "hf2"), str(tmp_path / "b")]) == 0
    a, b = (
        load_file(str(tmp_path / "a" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "model.safetensors")),
    )
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    cfg_a = json.loads((tmp_path / "a" / "config.json").read_text())["model"]
    cfg_b = json.loads((tmp_path / "b" / "config.json").read_text())["model"]
    assert cfg_a == cfg_b and cfg_a["rope_theta"] == 5000.0 and cfg_a["n_kv_heads"] == 2


def test_cli_help_and_one_line_errors(tmp_path, capsys):
    assert convert_main(["--help"]) == 0
    assert "from-hf" in capsys.readouterr().out
    assert convert_main(["from-hf", "--help"]) == 0
    assert "default: float32" in capsys.readouterr().out
    assert convert_main(["sideways"]) == 2
    capsys.readouterr()

    def error_of(argv: list[str]) -> str:
        assert convert_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
        return err

    assert "not found" in error_of(["from-hf", str(tmp_path / "missing"), str(tmp_path / "out")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "config.json is missing" in error_of(["from-hf", str(empty), str(tmp_path / "out")])
    (empty / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert "bert" in error_of(["from-hf", str(empty), str(tmp_path / "out")])
    binonly = tmp_path / "binonly"
    binonly.mkdir()
    (binonly / "config.json").write_text(json.dumps(_hf_model("gpt2", True).config.to_dict()))
    (binonly / "pytorch_model.bin").write_bytes(b"not read")
    assert "safetensors" in error_of(["from-hf", str(binonly), str(tmp_path / "out")])
    assert "not found" in error_of(["to-hf", str(tmp_path / "missing"), str(tmp_path / "out")])

    # a decoder LM that neither HF architecture computes
    cfg = DecoderLMConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, d_ff=32, pos="sinusoidal")
    save_checkpoint(tmp_path / "odd", DecoderLM(cfg), {"family": "decoder_lm", "model": asdict(cfg)})
    assert "matches neither" in error_of(["to-hf", str(tmp_path / "odd"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
