"""Image encoders: ViT against HF ViTModel (copied weights), patchify, CNN grid flattening."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gensys.nn.positions import sinusoidal_2d
from gensys.nn.vision import CNNEncoder, ViTEncoder, patchify

# transformers 4.x named ViT's modules differently; map them to the 5.x names used below.
_OLD_VIT_NAMES = [
    ("encoder.layer.", "layers."),
    ("attention.attention.query", "attention.q_proj"),
    ("attention.attention.key", "attention.k_proj"),
    ("attention.attention.value", "attention.v_proj"),
    ("attention.output.dense", "attention.o_proj"),
    ("intermediate.dense", "mlp.fc1"),
    ("output.dense", "mlp.fc2"),
]


def _vit_from_hf(hf, n_layers: int) -> dict[str, torch.Tensor]:
    sd = {}
    for k, v in hf.state_dict().items():
        for old, new in _OLD_VIT_NAMES:
            k = k.replace(old, new)
        sd[k] = v
    proj = sd["embeddings.patch_embeddings.projection.weight"]  # conv (D, C, p, p) == linear on (C, p, p)
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_emb": sd["embeddings.position_embeddings"],
        "patch_proj.weight": proj.reshape(proj.shape[0], -1),
        "patch_proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    names = {
        "attention.q_proj": "attn.q_proj",
        "attention.k_proj": "attn.k_proj",
        "attention.v_proj": "attn.v_proj",
        "attention.o_proj": "attn.o_proj",
        "layernorm_before": "attn_norm",
        "layernorm_after": "mlp_norm",
        "mlp.fc1": "mlp.up_proj",
        "mlp.fc2": "mlp.down_proj",
    }
    for i in range(n_layers):
        for src, dst in names.items():
            for p in ("weight", "bias"):
                out[f"blocks.{i}.{dst}.{p}"] = sd[f"layers.{i}.{src}.{p}"]
    return out


def test_vit_equals_hf_vit_model_at_trained_and_other_resolutions():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
    )
    hf = ViTModel(cfg, add_pooling_layer=False).eval()
    ours = ViTEncoder(16, 4, 3, 32, 2, 4, 64, pos="learned", norm_eps=cfg.layer_norm_eps).eval()
    ours.load_state_dict(_vit_from_hf(hf, 2))
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), hf(images).last_hidden_state, atol=1e-5, rtol=1e-5)
        # a larger, non-square image: the learned table is resized bicubically, as HF does on request
        big = torch.randn(1, 3, 24, 20)
        ref = hf(big, interpolate_pos_encoding=True).last_hidden_state
        out = ours(big)
        assert out.shape == (1, 1 + 6 * 5, 32)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_patchify_plus_linear_equals_strided_conv():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 8, kernel_size=4, stride=4)
    lin = nn.Linear(48, 8)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.reshape(8, -1))
        lin.bias.copy_(conv.bias)
    images = torch.randn(2, 3, 8, 12)
    expected = conv(images).flatten(2).transpose(1, 2)  # (B, 2*3, 8), row-major
    torch.testing.assert_close(lin(patchify(images, 4)), expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError):
        patchify(torch.randn(1, 3, 10, 8), 4)


@pytest.mark.parametrize("pos", ["sinusoidal2d", "learned2d", "none"])
def test_vit_other_position_kinds_run_at_other_sizes(pos):
    vit = ViTEncoder(16, 4, 3, 16, 1, 2, 32, pos=pos, cls_token=False).eval()
    assert vit(torch.randn(1, 3, 16, 16)).shape == (1, 16, 16)
    assert vit(torch.randn(1, 3, 12, 8)).shape == (1, 6, 16)


def test_cnn_encoder_flattens_a_3x3_grid_row_major():
    torch.manual_seed(2)
    cnn = CNNEncoder(3, [8, 16], grid=3, pos="none").eval()
    images = torch.randn(2, 3, 32, 32)
    feats = cnn(images)
    assert feats.shape == (2, 9, 16)  # 3 x 3 x C -> 9 x C
    fmap = nn.functional.adaptive_avg_pool2d(cnn.stages(cnn.stem(images)), 3)  # (B, C, 3, 3)
    for r in range(3):
        for c in range(3):
            torch.testing.assert_close(feats[:, r * 3 + c], fmap[:, :, r, c])
    assert cnn(torch.randn(1, 3, 48, 40)).shape == (1, 9, 16)  # any input size -> the same grid

    with_pos = CNNEncoder(3, [8, 16], grid=3, pos="sinusoidal2d").eval()
    with_pos.load_state_dict(cnn.state_dict())
    torch.testing.assert_close(with_pos(images) - feats, sinusoidal_2d(3, 3, 16).expand(2, 9, 16))
    native = CNNEncoder(3, [8, 16], grid=0, pos="learned2d")
    assert native(torch.randn(1, 3, 32, 32)).shape == (1, 8 * 8, 16)  # two stride-2 stages: 32 -> 8


def test_batchnorm_cnn_keeps_images_apart_and_is_batch_independent_in_eval():
    """norm="batch": in eval an image's features do not depend on its batch; and unlike per-image GroupNorm
    it keeps a global difference between images (a uniformly brighter image) that GroupNorm removes."""
    from gensys.nn.vision import conv_norm

    torch.manual_seed(3)
    bn = CNNEncoder(3, [8, 16], grid=0, pos="none", norm="batch")
    bn.train()
    for _ in range(3):
        bn(torch.randn(6, 3, 16, 16))  # running statistics
    bn.eval()
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(bn(x)[1:2], bn(x[1:2]), atol=1e-6, rtol=1e-6)
    norm = conv_norm("group", 16)
    fmap = torch.rand(1, 16, 4, 4)
    torch.testing.assert_close(norm(fmap), norm(fmap * 3 + 1), atol=1e-4, rtol=1e-4)  # GroupNorm: gone
    bn_layer = conv_norm("batch", 16).eval()
    assert not torch.allclose(bn_layer(fmap), bn_layer(fmap * 3 + 1))  # BatchNorm (eval): kept
    with pytest.raises(ValueError, match="unknown CNN norm"):
        conv_norm("layer", 16)
