"""The model families on a CUDA device: SDPA's GPU kernels with our masks, cache parity, HF parity, bf16.

Skipped by default (`-m gpu` selects them); they need a CUDA device.
"""

from __future__ import annotations

import pytest
import torch

from gensys.models.captioner import Captioner, CaptionerConfig
from gensys.models.convert import model_from_hf
from gensys.models.decoder_lm import DecoderLM, gpt2_config, llama_config
from gensys.models.seq2seq import Seq2Seq, marian_config, t5_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
V = 101
DEV = "cuda"


def _padded(b: int = 3, t: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, V, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, :5] = 0
    mask[2, :1] = 0
    return ids.masked_fill(mask == 0, 0).to(DEV), mask.to(DEV)


LM_CONFIGS = {
    "gpt2": gpt2_config(vocab_size=V, d_model=64, n_layers=2, n_heads=4, max_seq_len=64),
    "llama_gqa": llama_config(vocab_size=V, d_model=64, n_layers=2, n_heads=8, n_kv_heads=2, d_ff=96),
}


@pytest.mark.parametrize("name", list(LM_CONFIGS))
def test_decoder_lm_cuda_equals_cpu_and_cache_equals_full(name):
    torch.manual_seed(0)
    cpu = DecoderLM(LM_CONFIGS[name]).eval()
    gpu = DecoderLM(LM_CONFIGS[name]).to(DEV).eval()
    gpu.load_state_dict(cpu.state_dict())
    ids, mask = _padded()
    real = mask.bool()
    with torch.no_grad():
        full = gpu(ids, attention_mask=mask)
        ref = cpu(ids.cpu(), attention_mask=mask.cpu())
        torch.testing.assert_close(full[real].cpu(), ref[real.cpu()], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(gpu(ids).cpu(), cpu(ids.cpu()), atol=1e-4, rtol=1e-4)  # is_causal path
        cache = gpu.new_cache(initial_capacity=4)
        steps = [gpu(ids[:, :6], attention_mask=mask[:, :6], cache=cache)]
        for t in range(6, ids.shape[1]):
            steps.append(gpu(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], atol=1e-4, rtol=1e-4)


def test_decoder_lm_equals_hf_llama_on_cuda_and_bf16_runs():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    hf = LlamaForCausalLM(cfg).eval()
    ours = model_from_hf(hf).to(DEV)
    hf.to(DEV)
    ids, mask = _padded()
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    real = mask.bool()
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=pos).logits
        out = ours(ids, attention_mask=mask)
        torch.testing.assert_close(out[real], ref[real], atol=1e-4, rtol=1e-4)
        ours.to(torch.bfloat16)
        half = ours(ids, attention_mask=mask).float()
    assert torch.isfinite(half).all()
    agree = (half[real].argmax(-1) == out[real].argmax(-1)).float().mean()
    assert agree > 0.8


@pytest.mark.parametrize("name", ["marian", "t5"])
def test_seq2seq_cuda_cache_parity(name):
    torch.manual_seed(2)
    small = dict(vocab_size=V, d_model=64, n_heads=4, d_ff=96, n_enc_layers=2, n_dec_layers=2, dropout=0.0)
    cfg = marian_config(**small) if name == "marian" else t5_config(**small)
    model = Seq2Seq(cfg).to(DEV).eval()
    src, src_mask = _padded(3, 10)
    tgt, tgt_mask = _padded(3, 7)
    real = tgt_mask.bool()
    with torch.no_grad():
        memory = model.encode(src, src_mask)
        full = model.decode(tgt, memory, src_mask, attention_mask=tgt_mask)
        cache = model.new_cache()
        steps = [model.decode(tgt[:, :3], memory, src_mask, attention_mask=tgt_mask[:, :3], cache=cache)]
        for t in range(3, 7):
            steps.append(
                model.decode(
                    tgt[:, t : t + 1], memory, src_mask, attention_mask=tgt_mask[:, : t + 1], cache=cache
                )
            )
        cpu = Seq2Seq(cfg).eval()
        cpu.load_state_dict(model.state_dict())
        ref = cpu(src.cpu(), src_mask.cpu(), tgt.cpu(), tgt_mask.cpu())
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full[real].cpu(), ref[real.cpu()], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("encoder", ["vit", "cnn"])
def test_captioner_cuda_cache_parity(encoder):
    torch.backends.cudnn.allow_tf32 = False  # compare convolutions at full fp32 precision
    torch.manual_seed(3)
    cfg = CaptionerConfig(
        vocab_size=V,
        encoder=encoder,
        image_size=32,
        patch_size=8,
        enc_d_model=32,
        enc_layers=1,
        enc_heads=2,
        enc_d_ff=64,
        enc_pos="learned" if encoder == "vit" else "sinusoidal2d",
        cnn_channels=[8, 16],
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_ff=96,
        dropout=0.0,
    )
    model = Captioner(cfg).to(DEV).eval()
    images = torch.randn(3, 3, 32, 32, device=DEV)
    tokens, mask = _padded(3, 8)
    real = mask.bool()
    with torch.no_grad():
        memory = model.encode(images)
        full = model.decode(tokens, memory, attention_mask=mask)
        cache = model.new_cache()
        steps = [model.decode(tokens[:, :6], memory, attention_mask=mask[:, :6], cache=cache)]
        for t in range(6, 8):
            steps.append(
                model.decode(tokens[:, t : t + 1], memory, attention_mask=mask[:, : t + 1], cache=cache)
            )
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], atol=1e-4, rtol=1e-4)
