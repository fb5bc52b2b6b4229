"""seq2seq: equals HF Marian (sinusoidal, post-norm) and HF T5 (relative bias, pre-norm RMSNorm); cached
decoding equals the full pass step by step with padded sources and left-padded targets."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from transformers import MarianConfig, MarianMTModel, T5Config, T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

from gensys.models import build_model
from gensys.models.convert import seq2seq_model_from_hf
from gensys.models.seq2seq import Seq2Seq, Seq2SeqConfig, marian_config, t5_config

hf_logging.set_verbosity_error()
V = 61


def _hf_marian(activation: str) -> MarianMTModel:
    cfg = MarianConfig(
        vocab_size=V,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        scale_embedding=True,
        activation_function=activation,
        pad_token_id=0,
        decoder_start_token_id=0,
    )
    model = MarianMTModel(cfg).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()  # zero by default: make the mapping of this bias matter
    return model


def _hf_t5(ff: str) -> T5ForConditionalGeneration:
    cfg = T5Config(
        vocab_size=V,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=3,  # heads * d_kv != d_model, as T5 allows
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj=ff,
        decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(cfg).eval()


HF_BUILDERS = {
    "marian_relu": lambda: _hf_marian("relu"),
    "marian_gelu": lambda: _hf_marian("gelu"),
    "t5_relu": lambda: _hf_t5("relu"),
    "t5_gated_gelu": lambda: _hf_t5("gated-gelu"),
}


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    src = torch.randint(1, V, (3, 8), generator=g)
    src_mask = torch.ones(3, 8, dtype=torch.long)
    src_mask[1, 5:] = 0  # right-padded source
    src_mask[2, 6:] = 0
    tgt = torch.randint(1, V, (3, 6), generator=g)
    return src.masked_fill(src_mask == 0, 0), src_mask, tgt


@pytest.mark.parametrize("name", list(HF_BUILDERS))
def test_logits_equal_hf_twin(name):
    torch.manual_seed(0)
    hf = HF_BUILDERS[name]()
    ours = seq2seq_model_from_hf(hf)
    src, src_mask, tgt = _batch()
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt).logits
        out = ours(src, src_mask, tgt)
        assert (out - ref).abs().max() <= 1e-5
        ref_mem = hf.get_encoder()(input_ids=src, attention_mask=src_mask).last_hidden_state
        mem = ours.encode(src, src_mask)
        real = src_mask.bool()
        assert (mem[real] - ref_mem[real]).abs().max() <= 1e-5


SMALL = dict(vocab_size=V, d_model=32, n_heads=4, d_ff=64, n_enc_layers=2, n_dec_layers=2, dropout=0.0)
CACHE_CONFIGS = {
    "marian": marian_config(**SMALL),
    "t5": t5_config(**{**SMALL, "rel_buckets": 8, "rel_max_distance": 20}),
    "learned_prenorm": Seq2SeqConfig(**SMALL, pos="learned", pre_norm=True, max_seq_len=32),
}


@pytest.mark.parametrize("name", list(CACHE_CONFIGS))
def test_cached_decoding_equals_full_pass_with_padding(name):
    torch.manual_seed(1)
    model = Seq2Seq(CACHE_CONFIGS[name]).eval()
    src, src_mask, tgt = _batch()
    tgt_mask = torch.ones_like(tgt)
    tgt_mask[0, :2] = 0  # left-padded target prefix (e.g. forced prefixes of different lengths)
    tgt = tgt.masked_fill(tgt_mask == 0, 0)
    with torch.no_grad():
        memory = model.encode(src, src_mask)
        full = model.decode(tgt, memory, src_mask, attention_mask=tgt_mask)
        cache = model.new_cache(initial_capacity=2)
        steps = [model.decode(tgt[:, :3], memory, src_mask, attention_mask=tgt_mask[:, :3], cache=cache)]
        for t in range(3, tgt.shape[1]):
            steps.append(
                model.decode(
                    tgt[:, t : t + 1], memory, src_mask, attention_mask=tgt_mask[:, : t + 1], cache=cache
                )
            )
    inc = torch.cat(steps, 1)
    real = tgt_mask.bool()
    torch.testing.assert_close(inc[real], full[real], atol=1e-5, rtol=1e-5)
    # forward = encode + decode
    torch.testing.assert_close(model(src, src_mask, tgt, tgt_mask)[real], full[real])


@pytest.mark.parametrize("name", list(CACHE_CONFIGS))
def test_a_row_does_not_depend_on_the_other_rows(name):
    torch.manual_seed(2)
    model = Seq2Seq(CACHE_CONFIGS[name]).eval()
    src, src_mask, tgt = _batch()
    with torch.no_grad():
        batched = model(src, src_mask, tgt)
        for b in range(3):
            n = int(src_mask[b].sum())
            alone = model(src[b : b + 1, :n], None, tgt[b : b + 1])
            torch.testing.assert_close(batched[b], alone[0], atol=1e-5, rtol=1e-5)
        # left-padding the source instead of right-padding gives the same result
        n = int(src_mask[1].sum())
        left = torch.cat([torch.zeros(1, 8 - n, dtype=torch.long), src[1:2, :n]], 1)
        left_mask = torch.cat(
            [torch.zeros(1, 8 - n, dtype=torch.long), torch.ones(1, n, dtype=torch.long)], 1
        )
        torch.testing.assert_close(model(left, left_mask, tgt[1:2])[0], batched[1], atol=1e-5, rtol=1e-5)


def test_config_round_trip_and_names():
    cfg = t5_config(**SMALL)
    assert Seq2SeqConfig.from_dict(asdict(cfg)) == cfg
    model = build_model("seq2seq", asdict(cfg))
    names = {n for n, _ in model.named_modules()}
    for n in (
        "tok_emb",
        "encoder.blocks.1.attn.q_proj",
        "decoder.blocks.0.cross_attn.k_proj",
        "decoder.norm",
        "lm_head",
    ):
        assert n in names
    assert model.lm_head.weight is model.tok_emb.weight
    with pytest.raises(ValueError, match="unknown"):
        Seq2SeqConfig.from_dict({**asdict(cfg), "n_layers": 2})
