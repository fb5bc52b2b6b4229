"""Encoder-decoder decoding: greedy / beam on converted HF T5 and Marian twins equal HF `generate`; the
captioner (encoder-decoder over image features) decodes a batch exactly as it decodes each image alone."""

from __future__ import annotations

import pytest
import torch
from transformers import MarianConfig, MarianMTModel, T5Config, T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

from gensys.generate import GenerationConfig, generate, stream
from gensys.models.captioner import Captioner, CaptionerConfig
from gensys.models.convert import seq2seq_model_from_hf

hf_logging.set_verbosity_error()
V = 61
START = 0  # decoder start token (= pad) in both HF families


def _t5() -> torch.nn.Module:
    torch.manual_seed(11)
    cfg = T5Config(
        vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=START,
        pad_token_id=0, eos_token_id=1, initializer_factor=1.0,
    )  # fmt: skip
    return T5ForConditionalGeneration(cfg).eval()


def _marian() -> torch.nn.Module:
    torch.manual_seed(12)
    cfg = MarianConfig(
        vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        pad_token_id=0, decoder_start_token_id=START, eos_token_id=1, init_std=0.2,
    )  # fmt: skip
    model = MarianMTModel(cfg).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()
    return model


@pytest.fixture(scope="module", params=["t5", "marian"])
def pair(request):
    hf = _t5() if request.param == "t5" else _marian()
    ours = seq2seq_model_from_hf(hf)
    g = torch.Generator().manual_seed(3)
    src = torch.randint(2, V, (3, 7), generator=g)
    mask = torch.ones_like(src)
    src[1, 5:], mask[1, 5:] = 0, 0  # a shorter source, right-padded as the encoder allows
    free = generate(ours, None, config=GenerationConfig(max_new_tokens=12, decoder_start_token_id=START),
                    encoder_inputs=(src, mask), memory_mask=mask)  # fmt: skip
    eos = int(free.sequences[0, 6])  # a token the model actually emits, so EOS handling is exercised
    return hf, ours, src, mask, eos


CASES = {
    "greedy": dict(strategy="greedy", max_new_tokens=10),
    "greedy_penalties": dict(strategy="greedy", max_new_tokens=10, no_repeat_ngram_size=2, min_new_tokens=3),
    "beam4": dict(strategy="beam", num_beams=4, num_return_sequences=4, max_new_tokens=10),
    "beam3_lp_early": dict(
        strategy="beam",
        num_beams=3,
        length_penalty=0.7,
        early_stopping=True,
        no_repeat_ngram_size=3,
        min_new_tokens=2,
        max_new_tokens=10,
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", ["modules", "static"])
def test_encoder_decoder_matches_hf_generate(pair, case, path):
    hf, ours, src, mask, eos = pair
    # Output padding id 2, not the model's pad 0: HF fills finished beams with `pad or eos` (0 -> EOS).
    cfg = GenerationConfig(
        **CASES[case], eos_token_id=eos, pad_token_id=2, decoder_start_token_id=START, decode_path=path
    )
    if path == "static" and ours.step_spec() is None:  # T5: relative position biases are not covered
        with pytest.raises(ValueError, match="no fixed-shape decode step"):
            generate(ours, None, config=cfg, encoder_inputs=(src, mask), memory_mask=mask)
        return
    out = generate(ours, None, config=cfg, encoder_inputs=(src, mask), memory_mask=mask, output_scores=True)
    kw = {k: v for k, v in CASES[case].items() if k != "strategy"}
    kw["num_beams"] = kw.get("num_beams", 1)
    ref = hf.generate(
        input_ids=src, attention_mask=mask, eos_token_id=eos, pad_token_id=2, decoder_start_token_id=START,
        forced_eos_token_id=None, do_sample=False, return_dict_in_generate=True, output_scores=True, **kw,
    )  # fmt: skip
    assert torch.equal(out.sequences, ref.sequences)
    for got, want in zip(out.scores, ref.scores, strict=True):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    if cfg.strategy == "beam":
        torch.testing.assert_close(out.sequences_scores, ref.sequences_scores, atol=2e-5, rtol=1e-5)
    assert (out.num_new_tokens < cfg.max_new_tokens).any()  # some hypothesis ended with EOS


def _tiny_captioner() -> Captioner:
    torch.manual_seed(0)
    cfg = CaptionerConfig(
        vocab_size=40, image_size=16, patch_size=8, enc_d_model=32, enc_layers=1, enc_heads=2, enc_d_ff=64,
        d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=32, init_std=0.2,
    )  # fmt: skip
    return Captioner(cfg)


def test_captioner_batch_equals_one_image_at_a_time():
    model = _tiny_captioner()
    images = torch.randn(2, 3, 16, 16)
    gcfg = GenerationConfig(
        strategy="beam", num_beams=3, max_new_tokens=8, eos_token_id=2, decoder_start_token_id=1
    )
    batched = generate(model, None, config=gcfg, encoder_inputs=(images,))
    for i in range(2):
        alone = generate(model, None, config=gcfg, encoder_inputs=(images[i : i + 1],))
        assert batched.nbest[i][0].tokens == alone.nbest[0][0].tokens
        assert batched.nbest[i][0].score == pytest.approx(alone.nbest[0][0].score, abs=1e-5)
    # Streaming works the same way for encoder-decoders; the model is left in the mode it was in.
    model.train()
    events = list(
        stream(model, None, config=gcfg.replace(strategy="greedy", num_beams=None), encoder_inputs=(images,))
    )
    assert model.training
    greedy = generate(
        model, None, config=gcfg.replace(strategy="greedy", num_beams=None), encoder_inputs=(images,)
    )
    assert torch.equal(events[-1].output.sequences, greedy.sequences)


def test_captioner_static_step_equals_the_module_path():
    model = _tiny_captioner().eval()
    images = torch.randn(3, 3, 16, 16)
    gcfg = GenerationConfig(
        strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=8, eos_token_id=2,
        decoder_start_token_id=1,
    )  # fmt: skip
    outs = [
        generate(
            model, None, config=gcfg.replace(decode_path=p), encoder_inputs=(images,), output_scores=True
        )
        for p in ("modules", "static")
    ]
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    torch.testing.assert_close(outs[0].sequences_scores, outs[1].sequences_scores, atol=1e-5, rtol=1e-5)
