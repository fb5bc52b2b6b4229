"""RLHF losses on hand-computed cases (and against torch's own margin ranking loss / cross-entropy)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gensys.train.losses import (
    IGNORE_INDEX,
    bradley_terry_loss,
    dpo_loss,
    gae,
    kl_penalty,
    margin_ranking_loss,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    sequence_logprobs,
    token_entropy,
    token_logprobs,
    whiten,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_margin_ranking_loss_hand_case_and_torch_parity():
    r_w, r_l = torch.tensor([2.0, 0.5, 1.0]), torch.tensor([1.0, 1.0, 1.0])
    # gaps 1.0, -0.5, 0.0 against margin 1: max(0, 1 - gap) = 0, 1.5, 1.0
    loss, n = margin_ranking_loss(r_w, r_l, margin=1.0)
    assert n == 3
    assert loss.item() == pytest.approx(2.5)
    ref = F.margin_ranking_loss(r_w, r_l, torch.ones(3), margin=1.0, reduction="sum")
    assert loss.item() == pytest.approx(ref.item())
    # no margin: only the pair the model ranks the wrong way costs anything
    assert margin_ranking_loss(r_w, r_l)[0].item() == pytest.approx(0.5)


def test_bradley_terry_loss_hand_case():
    loss, n = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]))
    assert n == 1
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-6)  # 0.31326
    # a margin of 1 turns a lead of 1 into a coin flip: -log sigmoid(0) = log 2
    loss_m, _ = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=1.0)
    assert loss_m.item() == pytest.approx(math.log(2.0), abs=1e-6)
    # gradient pushes the winner up and the loser down
    r_w, r_l = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    bradley_terry_loss(r_w, r_l)[0].backward()
    assert (r_w.grad < 0).all() and (r_l.grad > 0).all()


def test_dpo_loss_hand_case():
    # chosen: beta*(pi - ref) = 0.5*(-1 - -2) = 0.5; rejected: 0.5*(-3 - -2) = -0.5; z = 1
    out = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5)
    assert out.n_pairs == 1
    assert out.loss_sum.item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.5)
    assert out.rejected_rewards.item() == pytest.approx(-0.5)
    # conservative DPO with 10% flipped labels: 0.9 * log(1+e^-1) + 0.1 * log(1+e)
    smoothed = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5, label_smoothing=0.1)
    want = 0.9 * math.log(1 + math.exp(-1.0)) + 0.1 * math.log(1 + math.e)
    assert smoothed.loss_sum.item() == pytest.approx(want, abs=1e-6)
    # policy == reference: every pair costs log 2 whatever beta is
    same = dpo_loss(t(-4.0, -1.0), t(-2.0, -7.0), t(-4.0, -1.0), t(-2.0, -7.0), beta=3.0)
    assert same.loss_sum.item() == pytest.approx(2 * math.log(2.0), abs=1e-6)


def test_dpo_loss_nll_term_hand_case():
    # z = 0.5 * ((-1 + 2) - (-3 + 2)) = 1; loss = -log s(1) + 0.2 * (1 / 4) (chosen: 4 tokens, log pi = -1)
    out = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5, nll_coef=0.2, chosen_tokens=t(4.0))
    assert out.loss_sum.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))) + 0.05, rel=1e-6)
    with pytest.raises(ValueError, match="chosen_tokens"):
        dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), nll_coef=0.2)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = torch.tensor([-5.0], requires_grad=True), torch.tensor([-5.0], requires_grad=True)
    dpo_loss(pc, pr, t(-5.0), t(-5.0), beta=0.1).loss_sum.backward()
    assert pc.grad.item() == pytest.approx(-0.05)  # -beta * sigmoid(-0) = -0.05
    assert pr.grad.item() == pytest.approx(0.05)


def test_gae_hand_cases():
    # gamma = lam = 1: advantages are (sum of future rewards) - V
    adv, ret = gae(t([0.0, 0.0, 1.0]), t([0.5, 0.5, 0.5]), torch.ones(1, 3, dtype=torch.bool), lam=1.0)
    assert torch.allclose(ret, t([1.0, 1.0, 1.0]))
    assert torch.allclose(adv, t([0.5, 0.5, 0.5]))
    # lam = 0.5: deltas (0, 0, 0.5) -> A = (0.125, 0.25, 0.5)
    adv, _ = gae(t([0.0, 0.0, 1.0]), t([0.5, 0.5, 0.5]), torch.ones(1, 3, dtype=torch.bool), lam=0.5)
    assert torch.allclose(adv, t([0.125, 0.25, 0.5]))
    # right padding: the padded value (9) must not leak into the last real token
    mask = torch.tensor([[True, True, False]])
    adv, ret = gae(t([1.0, 2.0, 5.0]), t([0.1, 0.2, 9.0]), mask, gamma=0.9, lam=1.0)
    # delta1 = 2 - 0.2 = 1.8; delta0 = 1 + 0.9*0.2 - 0.1 = 1.08; A0 = 1.08 + 0.9*1.8 = 2.7
    assert torch.allclose(adv, t([2.7, 1.8, 0.0]))
    assert torch.allclose(ret, t([2.8, 2.0, 0.0]))


def test_ppo_policy_loss_hand_case():
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.1, 3.0]])
    adv = t([1.0, 1.0, -1.0, -2.0, 7.0])
    mask = torch.tensor([[True, True, True, True, False]])  # the last token is padding
    old = torch.zeros(1, 5)
    out = ppo_policy_loss(ratios.log(), old, adv, mask, clip_range=0.2)
    # per token max(-A r, -A clip(r)): -1.2 (clipped), -0.5, 0.8 (clipped), 2.2 -> sum 1.3
    assert out.loss_sum.item() == pytest.approx(1.3, abs=1e-5)
    assert int(out.n_tokens) == 4
    assert out.clip_fraction.item() == pytest.approx(0.5)


def test_ppo_policy_loss_gradient_follows_advantage_inside_clip():
    logp = torch.zeros(1, 2, requires_grad=True)
    out = ppo_policy_loss(logp, torch.zeros(1, 2), t([1.0, -1.0]), torch.ones(1, 2, dtype=torch.bool))
    out.loss_sum.backward()
    assert logp.grad[0, 0] < 0 < logp.grad[0, 1]  # raise the good token, lower the bad one
    # outside the clip region the gradient vanishes
    logp2 = torch.full((1, 1), math.log(2.0), requires_grad=True)
    ppo_policy_loss(
        logp2, torch.zeros(1, 1), t([1.0]), torch.ones(1, 1, dtype=torch.bool)
    ).loss_sum.backward()
    assert logp2.grad.abs().item() == 0.0


def test_ppo_value_loss_hand_case():
    mask = torch.ones(1, 2, dtype=torch.bool)
    # token 0: V=1 from V_old=0 clips to 0.2; R=2: max(1, 3.24)/2 = 1.62
    # token 1: V=0.1 (inside the clip), R=0: 0.005
    loss, n = ppo_value_loss(t([1.0, 0.1]), t([0.0, 0.0]), t([2.0, 0.0]), mask, clip_range=0.2)
    assert int(n) == 2
    assert loss.item() == pytest.approx(1.625, abs=1e-6)


def test_kl_penalty_estimators():
    lp, ref = t(-1.0), t(-2.0)
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(0.5)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(math.exp(-1.0), abs=1e-6)
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(lp, ref, "k4")
    # averaged over samples from pi, k1 and k3 both estimate KL(pi || ref)
    torch.manual_seed(0)
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    exact = float((p * (p / q).log()).sum())
    x = torch.multinomial(p, 200_000, replacement=True)
    for kind in ("k1", "k3"):
        est = kl_penalty(p.log()[x], q.log()[x], kind).mean().item()
        assert est == pytest.approx(exact, abs=0.01)


def test_token_logprobs_match_cross_entropy_and_skip_ignored():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 4, IGNORE_INDEX], [0, IGNORE_INDEX, 2]])
    lp = token_logprobs(logits, targets)
    ce = F.cross_entropy(logits.reshape(-1, 5), targets.reshape(-1), reduction="none").reshape(2, 3)
    assert torch.allclose(lp, -ce, atol=1e-6)  # cross_entropy gives 0 where ignored, as we do
    assert lp[0, 2] == 0 and lp[1, 1] == 0
    assert torch.allclose(sequence_logprobs(logits, targets), -ce.sum(1), atol=1e-6)


def test_entropy_whiten_masked_mean():
    assert token_entropy(torch.zeros(3, 4)).allclose(torch.full((3,), math.log(4.0)))
    assert token_entropy(torch.tensor([[100.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)
    x, mask = t([1.0, 2.0, 3.0, 100.0]), torch.tensor([[True, True, True, False]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    w = whiten(x, mask)
    s = math.sqrt(1.5)  # (x - 2) / sqrt(2/3)
    assert torch.allclose(w, t([-s, 0.0, s, 0.0]), atol=1e-5)
