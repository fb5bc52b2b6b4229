"""Training losses, written once.

Every loss returns a *sum* over its units (target tokens, pairs, ...) together with the unit count, never a
mean. The trainer divides by the total count over all micro-batches of a step and all data-parallel ranks, so
a step's gradient is the same whether its tokens arrive as one big batch or as N micro-batches spread over R
ranks (averaging per-micro-batch means would weight short micro-batches more).

Sections: token-level language-model losses (used by every system's pretraining/SFT); later stages (reward
models, DPO, PPO) add theirs below in their own section.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100  # label value of positions that are not predicted (padding, prompt tokens)

__all__ = [
    "IGNORE_INDEX",
    "token_cross_entropy",
    "count_target_tokens",
    "batch_target_tokens",
    "lm_loss",
]


# ----------------------------------------------------------------------------------------------------
# Token-level cross-entropy
# ----------------------------------------------------------------------------------------------------


def token_cross_entropy(
    logits: Tensor, targets: Tensor, *, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Sum of next-token NLL over target tokens, and the number of target tokens.

    logits: (..., V) at the positions that predict `targets` (...) (already aligned: no shift here).
    Positions whose target is `ignore_index` contribute nothing. Computed in fp32 even under autocast, since a
    bf16 log-softmax over a large vocabulary loses digits that the sum then accumulates.
    Returns (loss_sum: fp32 scalar, n_tokens: int64 scalar).
    """
    v = logits.shape[-1]
    flat_logits = logits.reshape(-1, v).float()  # (N, V)
    flat_targets = targets.reshape(-1)  # (N,)
    loss_sum = F.cross_entropy(
        flat_logits, flat_targets, ignore_index=ignore_index, reduction="sum", label_smoothing=label_smoothing
    )
    n_tokens = (flat_targets != ignore_index).sum()
    return loss_sum, n_tokens


def count_target_tokens(targets: Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """Number of positions that carry a target (what `token_cross_entropy` divides by, summed over a step)."""
    return int((targets != ignore_index).sum())


def batch_target_tokens(batch: Mapping[str, Any], ignore_index: int = IGNORE_INDEX) -> int:
    """Target tokens of an LM batch `{"labels": (B, T), ...}`: the trainer's default token counter."""
    if not isinstance(batch, Mapping) or "labels" not in batch:
        raise TypeError(
            "the default token counter reads batch['labels']; "
            "pass token_count_fn= to the Trainer for other batches"
        )
    return count_target_tokens(batch["labels"], ignore_index)


def lm_loss(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    *,
    label_smoothing: float = 0.0,
    ce: Callable[..., tuple[Tensor, Tensor]] = token_cross_entropy,
):
    """Batch -> loss glue of a decoder LM: `{"input_ids": (B, T), "labels": (B, T)}`, labels already shifted.

    `labels[b, t]` is the token that position t should predict (IGNORE_INDEX where none); optional
    `attention_mask` / `positions` / `segment_ids` (packed rows) are passed through. Returns (loss_sum,
    n_tokens, metrics) as the trainer's `loss_fn` contract asks. `ce` is `token_cross_entropy` or its compiled
    form (the trainer passes `torch.compile(token_cross_entropy)` under `compile=true`).
    """
    kwargs = {k: batch[k] for k in ("attention_mask", "positions", "segment_ids") if k in batch}
    logits = model(batch["input_ids"], **kwargs)  # (B, T, V)
    loss_sum, n_tokens = ce(logits, batch["labels"], label_smoothing=label_smoothing)
    return loss_sum, n_tokens, {}


# ----------------------------------------------------------------------------------------------------
# RLHF losses: reward model (pairwise), DPO, PPO (clipped policy + value losses, GAE, KL penalty)
# ----------------------------------------------------------------------------------------------------
# Same convention as above: a loss returns the *sum* over its units (preference pairs or response tokens)
# and the unit count; the caller divides once. Token-level inputs are (B, T) tensors aligned with a
# (B, T) bool `mask` that is True on the response tokens that count. Log-probabilities are fp32.
# (Imported here so the section stands alone; the token-level section above needs neither.)

from typing import NamedTuple  # noqa: E402

import torch  # noqa: E402

__all__ += [
    "token_logprobs",
    "sequence_logprobs",
    "token_entropy",
    "masked_mean",
    "whiten",
    "margin_ranking_loss",
    "bradley_terry_loss",
    "DPOResult",
    "dpo_loss",
    "kl_penalty",
    "gae",
    "PolicyLossResult",
    "ppo_policy_loss",
    "ppo_value_loss",
]


def token_logprobs(logits: Tensor, targets: Tensor, *, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """log p(target) at each position (fp32), 0 where the target is `ignore_index`.

    logits: (B, T, V) already aligned with targets (B, T) (position t predicts targets[:, t]).
    """
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    ignored = targets == ignore_index
    picked = logp.gather(-1, targets.masked_fill(ignored, 0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked.masked_fill(ignored, 0.0)


def sequence_logprobs(logits: Tensor, targets: Tensor, *, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Summed log-probability (B,) of each row's target tokens (a response's log-likelihood)."""
    return token_logprobs(logits, targets, ignore_index=ignore_index).sum(dim=-1)


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy (nats, fp32) of the next-token distribution at each position: (..., V) -> (...)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of `x` over positions where `mask` is True (0 when nothing is selected)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise `x` to unit variance (and zero mean) over the masked positions; 0 elsewhere.

    PPO whitens advantages per batch so the policy step size does not depend on the reward scale.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * (var + eps).rsqrt()
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def margin_ranking_loss(r_chosen: Tensor, r_rejected: Tensor, margin: float = 0.0) -> tuple[Tensor, int]:
    """Hinge form of the reward-model loss: sum of max(0, margin - (r_w - r_l)) over pairs, and the count.

    Zero once the winner leads the loser by at least `margin` (the seed notes' "penalise when the difference
    between winning and losing scores is too small").
    """
    return F.relu(margin - (r_chosen.float() - r_rejected.float())).sum(), r_chosen.numel()


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor, margin: float = 0.0) -> tuple[Tensor, int]:
    """Bradley-Terry reward-model loss: sum of -log sigmoid(r_w - r_l - margin) over pairs, and the count.

    The smooth version of `margin_ranking_loss`: it never reaches 0 but keeps pushing the gap past `margin`
    (InstructGPT uses margin 0; Llama 2 adds a margin for clearly separated pairs).
    """
    return -F.logsigmoid(r_chosen.float() - r_rejected.float() - margin).sum(), r_chosen.numel()


class DPOResult(NamedTuple):
    """`dpo_loss` output: loss sum and pair count, plus the implicit rewards beta * log(pi / ref)."""

    loss_sum: Tensor
    n_pairs: int
    chosen_rewards: Tensor  # (B,) detached
    rejected_rewards: Tensor  # (B,) detached


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    nll_coef: float = 0.0,
    chosen_tokens: Tensor | None = None,
) -> DPOResult:
    """Direct Preference Optimisation loss (Rafailov et al. 2023) from summed response log-probs (B,).

    loss = -log sigmoid(beta * [(log pi_w - log ref_w) - (log pi_l - log ref_l)]). `label_smoothing` eps
    assumes that share of labels is flipped (conservative DPO): -(1-eps) log s(z) - eps log s(-z).
    `nll_coef` alpha adds alpha * (-log pi_w / |y_w|), the chosen reply's per-token NLL (`chosen_tokens`
    (B,) = |y_w|), as in RPO (Pang et al. 2024) and Llama 3's DPO: DPO alone may lower the likelihood of
    both replies and move mass to text neither holds; the NLL term keeps the chosen one likely.
    """
    chosen = beta * (policy_chosen.float() - ref_chosen.float())  # (B,)
    rejected = beta * (policy_rejected.float() - ref_rejected.float())  # (B,)
    z = chosen - rejected
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    if nll_coef:
        if chosen_tokens is None:
            raise ValueError("dpo_loss: nll_coef needs chosen_tokens (the chosen replies' token counts)")
        losses = losses - nll_coef * policy_chosen.float() / chosen_tokens.float().clamp_min(1.0)
    return DPOResult(losses.sum(), z.numel(), chosen.detach(), rejected.detach())


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k1") -> Tensor:
    """Per-token estimate of KL(pi || ref) from the sampled tokens' log-probs (same shape as the inputs).

    k1 = log pi - log ref (unbiased, can be negative per token); k2 = (log pi - log ref)^2 / 2;
    k3 = r - 1 - log r with r = ref / pi (unbiased and >= 0; Schulman's estimator).
    """
    d = logp.float() - ref_logp.float()
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d**2
    if kind == "k3":
        return (-d).exp() - 1.0 + d
    raise ValueError(f"kl_penalty: unknown kind {kind!r}; expected k1, k2 or k3")


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over right-padded response tokens: (advantages, returns), (B, T).

    delta_t = r_t + gamma * V_{t+1} - V_t with V = 0 after a row's last token;
    A_t = delta_t + gamma * lam * A_{t+1}; returns = A + V. Positions outside `mask` get 0.
    """
    m = mask.to(values.dtype)
    v = values.detach() * m
    r = rewards.detach() * m
    advantages = torch.zeros_like(v)  # (B, T)
    next_adv = v.new_zeros(v.shape[0])  # (B,)
    next_value = v.new_zeros(v.shape[0])
    for t in reversed(range(v.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        adv = (delta + gamma * lam * next_adv) * m[:, t]
        advantages[:, t] = adv
        # A padded position resets the recursion, so a row's last real token sees V_{T} = 0.
        next_adv, next_value = adv, v[:, t]
    return advantages, (advantages + v) * m


class PolicyLossResult(NamedTuple):
    """`ppo_policy_loss` output: loss sum over tokens, token count, share of tokens where the clip bit."""

    loss_sum: Tensor
    n_tokens: Tensor
    clip_fraction: Tensor


def ppo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, clip_range: float = 0.2
) -> PolicyLossResult:
    """PPO's clipped surrogate (Schulman et al. 2017), summed over masked tokens.

    per token: max(-A * r, -A * clip(r, 1 - eps, 1 + eps)) with r = exp(logp - old_logp): the update gains
    nothing from moving the ratio past 1 +- eps in the direction the advantage favours.
    """
    ratio = (logp.float() - old_logp.float()).exp()  # (B, T)
    adv = advantages.detach().float()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    m = mask.bool()
    per_token = unclipped.maximum(clipped)
    loss_sum = per_token.masked_fill(~m, 0.0).sum()
    clip_fraction = masked_mean((clipped > unclipped).float(), m).detach()
    return PolicyLossResult(loss_sum, m.sum(), clip_fraction)


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *, clip_range: float = 0.2
) -> tuple[Tensor, Tensor]:
    """Clipped value loss summed over masked tokens: 0.5 * max((V - R)^2, (V_clip - R)^2), and the count.

    V_clip = V_old + clip(V - V_old, -eps, +eps) keeps the value head from jumping on one batch.
    """
    v = values.float()
    ret = returns.detach().float()
    old = old_values.detach().float()
    v_clipped = old + (v - old).clamp(-clip_range, clip_range)
    per_token = 0.5 * ((v - ret) ** 2).maximum((v_clipped - ret) ** 2)
    m = mask.bool()
    return per_token.masked_fill(~m, 0.0).sum(), m.sum()
