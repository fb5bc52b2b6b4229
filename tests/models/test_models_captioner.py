"""captioner: ViT and CNN encoders + caption decoder; cached decoding equals the full pass with padding."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from gensys.models import build_model
from gensys.models.captioner import Captioner, CaptionerConfig

V = 53
SMALL = dict(
    vocab_size=V,
    image_size=16,
    patch_size=4,
    enc_d_model=24,
    enc_layers=1,
    enc_heads=2,
    enc_d_ff=48,
    cnn_channels=[8, 16],
    d_model=32,
    n_layers=2,
    n_heads=4,
    d_ff=64,
    max_seq_len=16,
    dropout=0.0,
)
CONFIGS = {
    "vit_learned": CaptionerConfig(**SMALL, encoder="vit", enc_pos="learned"),
    "vit_sin2d_postnorm": CaptionerConfig(
        **SMALL, encoder="vit", enc_pos="sinusoidal2d", pre_norm=False, pos="sinusoidal"
    ),
    "cnn_grid3": CaptionerConfig(**SMALL, encoder="cnn", enc_pos="sinusoidal2d", cnn_grid=3),
    "cnn_learned2d": CaptionerConfig(**SMALL, encoder="cnn", enc_pos="learned2d", cnn_grid=0),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_caption_decoding_equals_full_pass_with_left_padding(name):
    torch.manual_seed(0)
    model = Captioner(CONFIGS[name]).eval()
    images = torch.randn(3, 3, 16, 16)
    tokens = torch.randint(1, V, (3, 7))
    mask = torch.ones_like(tokens)
    mask[1, :3] = 0
    tokens = tokens.masked_fill(mask == 0, 0)
    with torch.no_grad():
        memory = model.encode(images)
        full = model.decode(tokens, memory, attention_mask=mask)
        cache = model.new_cache(initial_capacity=2)
        steps = [model.decode(tokens[:, :4], memory, attention_mask=mask[:, :4], cache=cache)]
        for t in range(4, 7):
            steps.append(
                model.decode(tokens[:, t : t + 1], memory, attention_mask=mask[:, : t + 1], cache=cache)
            )
        torch.testing.assert_close(model(images, tokens, mask)[mask.bool()], full[mask.bool()])
        # a row alone (no padding, no other images) gives the same logits
        alone = model(images[1:2], tokens[1:2, 3:])
    inc = torch.cat(steps, 1)
    torch.testing.assert_close(inc[mask.bool()], full[mask.bool()], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone[0], full[1, 3:], atol=1e-5, rtol=1e-5)


def test_memory_shapes_and_config_round_trip():
    vit = Captioner(CONFIGS["vit_learned"]).eval()
    assert vit.encode(torch.randn(2, 3, 16, 16)).shape == (2, 1 + 16, 32)  # [CLS] + 4x4 patches
    cnn = Captioner(CONFIGS["cnn_grid3"]).eval()
    assert cnn.encode(torch.randn(2, 3, 16, 16)).shape == (2, 9, 32)  # 3 x 3 grid -> 9 vectors
    for cfg in CONFIGS.values():
        d = asdict(cfg)
        assert CaptionerConfig.from_dict(d) == cfg
        assert isinstance(build_model("captioner", d), Captioner)
    with pytest.raises(ValueError, match="encoder"):
        CaptionerConfig(encoder="resnet")
    # trains: gradients reach the image encoder through cross-attention
    images, tokens = torch.randn(2, 3, 16, 16), torch.randint(0, V, (2, 5))
    loss = torch.nn.functional.cross_entropy(cnn(images, tokens).reshape(-1, V), tokens.reshape(-1))
    loss.backward()
    assert cnn.image_encoder.stem[0].weight.grad.abs().sum() > 0
