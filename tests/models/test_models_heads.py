"""Reward / value and classifier heads on a decoder-LM trunk."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from gensys.models import build_model
from gensys.models.decoder_lm import DecoderLM, llama_config
from gensys.models.heads import Classifier, ClassifierConfig, RewardConfig, RewardModel, last_token_index

V = 47
LM = llama_config(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48)


def test_last_token_index_left_and_right_padding():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert last_token_index(mask, 4, 3, mask.device).tolist() == [3, 2, 3]
    assert last_token_index(None, 4, 2, mask.device).tolist() == [3, 3]


def test_reward_is_read_at_the_last_real_token_whatever_the_padding():
    torch.manual_seed(0)
    rm = RewardModel(RewardConfig(lm=LM)).eval()
    seq = torch.randint(1, V, (1, 5))
    left = torch.cat([torch.zeros(1, 2, dtype=torch.long), seq], 1)
    right = torch.cat([seq, torch.zeros(1, 2, dtype=torch.long)], 1)
    m_left = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    m_right = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        alone = rm(seq)
        assert alone.shape == (1,)
        torch.testing.assert_close(rm(left, attention_mask=m_left), alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rm(right, attention_mask=m_right), alone, atol=1e-5, rtol=1e-5)
        values = rm.values(seq)
        assert values.shape == (1, 5)
        torch.testing.assert_close(values[:, -1], alone)
        # a different last token changes the reward
        other = seq.clone()
        other[0, -1] = (other[0, -1] % (V - 1)) + 1
        assert not torch.allclose(rm(other), alone)


def test_trunk_loads_an_lm_and_has_no_lm_head():
    torch.manual_seed(1)
    lm = DecoderLM(LM).eval()
    rm = RewardModel(RewardConfig(lm=LM)).eval()
    rm.load_trunk(lm.state_dict())
    assert rm.trunk.lm_head is None and not any(
        n.startswith("trunk.lm_head") for n, _ in rm.named_parameters()
    )
    ids = torch.randint(0, V, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(rm.trunk.hidden(ids), lm.hidden(ids))
    rm.train()
    rm(ids).sum().backward()
    assert all(p.grad is not None for p in rm.parameters())


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_classifier_ignores_padding(pooling):
    torch.manual_seed(2)
    clf = Classifier(ClassifierConfig(lm=LM, n_classes=3, pooling=pooling)).eval()
    seq = torch.randint(1, V, (1, 4))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), seq], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = clf(seq)
        assert alone.shape == (1, 3)
        torch.testing.assert_close(clf(padded, attention_mask=mask), alone, atol=1e-5, rtol=1e-5)


def test_configs_round_trip_through_build_model():
    for family, cfg in (
        ("reward", RewardConfig(lm=LM, n_outputs=2)),
        ("classifier", ClassifierConfig(lm=LM)),
    ):
        d = asdict(cfg)
        assert isinstance(d["lm"], dict)
        model = build_model(family, d)
        assert type(model).__name__ in ("RewardModel", "Classifier")
        assert type(cfg).from_dict(d) == cfg
    assert build_model("reward", asdict(RewardConfig(lm=LM, n_outputs=2)))(
        torch.zeros(2, 3, dtype=torch.long)
    ).shape == (
        2,
        2,
    )
    with pytest.raises(ValueError, match="pooling"):
        ClassifierConfig(pooling="max")
