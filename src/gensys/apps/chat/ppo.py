"""Stage 5a, PPO against the reward model (InstructGPT's RLHF step), in its own readable loop.

Per iteration:

1. rollout: sample replies to `rollout_batch` training prompts from the policy (`gensys.generate`, sampling);
   one forward pass of the policy (log-probs, values), of the frozen reference (log-probs) and of the reward
   model (a score per reply);
2. rewards: per reply token r_t = -kl_coef * (log pi - log ref); the last token also gets the shaped score =
   normalised (RM score - length_slope * reply tokens) - missing_eos_penalty [reply cut at max_new_tokens]
   - repetition_coef * share of repeated 3-grams - length_coef * tokens beyond free_tokens (the
   reward-hacking guards; length_slope is the RM's own length preference, fitted on SFT replies before the
   first update when `length_debias` is on, else 0);
3. GAE advantages (whitened) and returns;
4. `ppo_epochs` passes over the batch in minibatches: clipped policy loss + vf_coef * clipped value loss.

Logged per iteration (ppo/metrics.jsonl, curves.png): RM score, shaped score, KL to the reference, entropy,
clip fraction, approximate KL between old and new policy, value loss, reply length, EOS rate, repetition.
Policy = SFT LM + a linear value head on its final hidden states (shared trunk); reference = frozen SFT.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gensys.apps.chat.common import (
    end_ids,
    init_checkpoint,
    length_slope,
    load_lm,
    load_reward_model,
    log,
    mark_done,
    prompt_ids,
    repeated_ngram_share,
    resolve_device,
    sample_replies,
    score,
    scoring_ids,
    stage_checkpoint,
    stage_dir,
    strip_end,
)
from gensys.apps.chat.config import Config, PPOConfig
from gensys.apps.chat.data import prompt_pool
from gensys.checkpoint import (
    capture_rng_state,
    load_state_dict_verified,
    load_train_state,
    restore_rng_state,
    save_checkpoint,
)
from gensys.data.atomic import atomic_write
from gensys.data.batching import IGNORE_INDEX, pad_batch
from gensys.data.tokenizer import Tokenizer
from gensys.models.decoder_lm import DecoderLM
from gensys.models.heads import RewardModel
from gensys.train import seed_everything
from gensys.train.losses import (
    gae,
    kl_penalty,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    token_entropy,
    token_logprobs,
    whiten,
)
from gensys.train.monitor import MetricsLog, read_metrics
from gensys.train.optim import param_groups


class PolicyWithValue(nn.Module):
    """Actor-critic for PPO: the LM (`lm`) plus a linear `value_head` on its final normed hidden states."""

    def __init__(self, lm: DecoderLM) -> None:
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(lm.cfg.d_model, 1)
        nn.init.zeros_(self.value_head.weight)  # start at V = 0: the first advantages are the raw rewards
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, start: int = 0) -> tuple[Tensor, Tensor]:
        """(logits (B, T - start, V), values (B, T - start)) at positions `start`.. (PPO only needs the
        reply's positions: the lm_head over the prompt would be wasted work)."""
        h = self.lm.hidden(input_ids, attention_mask=attention_mask)[:, start:]  # (B, T - start, D)
        return self.lm.lm_head(h), self.value_head(h).squeeze(-1)


@dataclass
class Rollout:
    """One batch of sampled replies with everything the PPO epochs need. Reply tensors are (B, Tn)."""

    input_ids: Tensor  # (B, T0 + Tn): left-padded prompt + right-padded reply
    attention_mask: Tensor  # (B, T0 + Tn) bool
    prompt_width: int  # T0
    targets: Tensor  # (B, Tn) reply tokens, IGNORE_INDEX on padding
    mask: Tensor  # (B, Tn) bool, reply tokens
    logp: Tensor  # (B, Tn) log pi_old
    ref_logp: Tensor  # (B, Tn)
    values: Tensor  # (B, Tn) V_old
    advantages: Tensor  # (B, Tn) whitened
    returns: Tensor  # (B, Tn)
    stats: dict[str, float]


def reply_logprobs(logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """log-probs of the reply tokens under the sampling distribution (logits / temperature)."""
    return token_logprobs(logits / temperature, targets)


class ScoreNorm:
    """Standardises RM scores with the mean/std of the first rollout (the SFT policy's own replies), so
    the KL coefficient and the guards mean the same thing whatever scale the reward model learned."""

    def __init__(self, enabled: bool, mean: float | None = None, std: float | None = None) -> None:
        self.enabled, self.mean, self.std = enabled, mean, std

    def __call__(self, s: Tensor) -> Tensor:
        if not self.enabled:
            return s
        if self.mean is None:
            self.mean = float(s.mean())
            self.std = float(s.std().clamp_min(1e-3)) if s.numel() > 1 else 1.0
        return (s - self.mean) / self.std


def shaped_scores(
    raw: Tensor,
    replies: list[list[int]],
    stops: list[int],
    pc: PPOConfig,
    norm: ScoreNorm,
    length_slope: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Score on each reply's last token after normalisation and the reward-hacking guards (B,)."""
    bodies = [strip_end(r, stops) for r in replies]
    ended = torch.tensor([e for _, e in bodies], dtype=torch.float32)
    rep = torch.tensor([repeated_ngram_share(b) for b, _ in bodies], dtype=torch.float32)
    lengths = torch.tensor([len(b) for b, _ in bodies], dtype=torch.float32)
    shaped = (
        norm(raw - length_slope * lengths)
        - pc.missing_eos_penalty * (1.0 - ended)
        - pc.repetition_coef * rep
        - pc.length_coef * (lengths - pc.free_tokens).clamp_min(0)
    )
    stats = {
        "rm_score": float(raw.mean()),
        "rm_score_length_debiased": float((raw - length_slope * lengths).mean()),
        "shaped_score": float(shaped.mean()),
        "reply_len": float(lengths.mean()),
        "eos_rate": float(ended.mean()),
        "repetition": float(rep.mean()),
    }
    return shaped, stats


@torch.no_grad()
def make_rollout(
    policy: PolicyWithValue,
    ref: DecoderLM,
    rm: RewardModel,
    tok: Tokenizer,
    prompts: list[list[int]],
    pc: PPOConfig,
    kl_coef: float,
    norm: ScoreNorm,
    generator: torch.Generator,
    length_slope: float = 0.0,
) -> Rollout:
    """Sample replies and compute log-probs, values, rewards, advantages and returns."""
    device = next(policy.parameters()).device
    replies = sample_replies(
        policy.lm,
        tok,
        prompts,
        max_new_tokens=pc.max_new_tokens,
        temperature=pc.temperature,
        top_k=pc.top_k,
        generator=generator,
    )
    p_ids, p_mask = pad_batch(prompts, tok.pad_id, side="left")  # (B, T0)
    r_ids, r_mask = pad_batch(replies, tok.pad_id, side="right")  # (B, Tn)
    ids = torch.cat([p_ids, r_ids], 1).to(device)  # (B, T)
    mask = torch.cat([p_mask, r_mask], 1).to(device)
    r_mask = r_mask.to(device)
    targets = r_ids.to(device).masked_fill(~r_mask, IGNORE_INDEX)
    t0 = p_ids.shape[1]
    # position t0 - 1 (<|assistant|>) predicts the first reply token; the last position predicts nothing
    logits, values = policy(ids, mask, start=t0 - 1)
    logits, values = logits[:, :-1], values[:, :-1] * r_mask  # (B, Tn, V), (B, Tn)
    logp = reply_logprobs(logits, targets, pc.temperature)  # (B, Tn)
    ref_logits = ref.lm_head(ref.hidden(ids, attention_mask=mask)[:, t0 - 1 : -1])  # (B, Tn, V)
    ref_logp = reply_logprobs(ref_logits, targets, pc.temperature)
    entropy = masked_mean(token_entropy(logits / pc.temperature), r_mask)
    del logits, ref_logits

    raw = score(rm, [scoring_ids(tok, p, r) for p, r in zip(prompts, replies)], tok.pad_id).to(device)
    shaped, stats = shaped_scores(raw.cpu(), replies, end_ids(tok), pc, norm, length_slope)
    kl = kl_penalty(logp, ref_logp, "k1") * r_mask  # (B, Tn)
    rewards = -kl_coef * kl
    last = r_mask.long().sum(1) - 1  # (B,) index of each reply's last token
    rewards[torch.arange(len(replies), device=device), last] += shaped.to(device)
    advantages, returns = gae(rewards, values, r_mask, gamma=pc.gamma, lam=pc.lam)
    stats.update(
        {
            "kl": float(kl.sum(1).mean()),  # per reply, summed over its tokens
            "kl_k3": float((kl_penalty(logp, ref_logp, "k3") * r_mask).sum(1).mean()),
            "entropy": float(entropy),
            "reward_total": float(rewards.sum(1).mean()),
            "value_mean": float(masked_mean(values, r_mask)),
        }
    )
    return Rollout(
        ids, mask, t0, targets, r_mask, logp, ref_logp, values, whiten(advantages, r_mask), returns, stats
    )


def ppo_update(
    policy: PolicyWithValue,
    opt: torch.optim.Optimizer,
    ro: Rollout,
    pc: PPOConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    """`ppo_epochs` passes of clipped-policy + value-loss steps over shuffled minibatches of the rollout."""
    policy.train()
    sums: dict[str, float] = {"policy_loss": 0.0, "value_loss": 0.0, "clip_frac": 0.0, "approx_kl": 0.0}
    n_updates = 0
    b = ro.input_ids.shape[0]
    params = [p for p in policy.parameters() if p.requires_grad]
    for _ in range(pc.ppo_epochs):
        order = torch.randperm(b, generator=generator).tolist()
        for s in range(0, b, pc.minibatch):
            idx = torch.tensor(order[s : s + pc.minibatch], device=ro.input_ids.device)
            logits, values = policy(ro.input_ids[idx], ro.attention_mask[idx], start=ro.prompt_width - 1)
            logits, values = logits[:, :-1], values[:, :-1]  # (b, Tn, V), (b, Tn)
            logp = reply_logprobs(logits, ro.targets[idx], pc.temperature)
            mask = ro.mask[idx]
            pol = ppo_policy_loss(logp, ro.logp[idx], ro.advantages[idx], mask, clip_range=pc.clip_range)
            v_sum, n_tok = ppo_value_loss(
                values, ro.values[idx], ro.returns[idx], mask, clip_range=pc.value_clip
            )
            loss = (pol.loss_sum + pc.vf_coef * v_sum) / n_tok.clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if pc.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, pc.max_grad_norm)
            opt.step()
            n = float(n_tok.clamp_min(1))
            sums["policy_loss"] += float(pol.loss_sum.detach()) / n
            sums["value_loss"] += float(v_sum.detach()) / n
            sums["clip_frac"] += float(pol.clip_fraction)
            sums["approx_kl"] += float(masked_mean(ro.logp[idx] - logp.detach(), mask))
            n_updates += 1
    return {k: v / max(n_updates, 1) for k, v in sums.items()}


def adapt_kl(kl_coef: float, kl: float, target: float) -> float:
    """Proportional controller (Ziegler et al. 2019): move kl_coef by at most 2% per iteration toward the
    value at which the per-reply KL sits at `target`."""
    if target <= 0:
        return kl_coef
    error = max(-0.2, min(0.2, kl / target - 1.0))
    return kl_coef * (1.0 + 0.1 * error)


def batch_prompts(pool: list[list[int]], it: int, batch: int, seed: int) -> list[list[int]]:
    """Prompts of iteration `it`: consecutive slices of a seeded permutation per pass over the pool
    (a pure function of the iteration, so a resumed run draws the same prompts)."""
    out: list[list[int]] = []
    pos = it * batch
    while len(out) < batch:
        epoch, off = divmod(pos, len(pool))
        order = torch.randperm(
            len(pool), generator=torch.Generator().manual_seed(seed * 7919 + epoch)
        ).tolist()
        take = order[off : off + batch - len(out)]
        out += [pool[i] for i in take]
        pos += len(take)
    return out


def plot_curves(metrics_path: Path, png_path: Path) -> None:
    """RM score, KL, entropy and reply length against iteration (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = [r for r in read_metrics(metrics_path) if "rm_score" in r]
    if not rec:
        return
    keys = [
        ("rm_score", "RM score"),
        ("kl", "KL to SFT (per reply)"),
        ("entropy", "entropy"),
        ("reply_len", "reply length"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3), dpi=100)
    steps = [r["step"] for r in rec]
    for ax, (k, title) in zip(axes, keys):
        ax.plot(steps, [r[k] for r in rec], linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(png_path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


@torch.no_grad()
def fit_length_slope(
    lm: DecoderLM,
    rm: RewardModel,
    tok: Tokenizer,
    prompts: list[list[int]],
    pc: PPOConfig,
    generator: torch.Generator,
) -> float:
    """The RM's score per reply token (least squares) over replies the policy samples for `prompts`."""
    replies: list[list[int]] = []
    for s in range(0, len(prompts), pc.rollout_batch):
        replies += sample_replies(
            lm,
            tok,
            prompts[s : s + pc.rollout_batch],
            max_new_tokens=pc.max_new_tokens,
            temperature=pc.temperature,
            top_k=pc.top_k,
            generator=generator,
        )
    raw = score(rm, [scoring_ids(tok, p, r) for p, r in zip(prompts, replies)], tok.pad_id).cpu()
    stops = end_ids(tok)
    lengths = torch.tensor([len(strip_end(r, stops)[0]) for r in replies], dtype=torch.float32)
    return length_slope(raw, lengths)


def run(cfg: Config, tok: Tokenizer) -> dict[str, Any]:
    """Optimise the SFT policy against the reward model with PPO; writes ppo/last (decoder_lm checkpoint)."""
    pc = cfg.ppo
    out_dir = stage_dir(cfg, "ppo")
    init = init_checkpoint(cfg, "ppo", pc.init_from)
    rm_path = Path(pc.reward_from) if pc.reward_from else stage_checkpoint(cfg, "reward")
    device = resolve_device(pc.device)
    seed_everything(pc.seed)
    lm, _ = load_lm(init, device)
    ref, _ = load_lm(init, device)
    rm, _ = load_reward_model(rm_path, device)
    for frozen in (ref, rm):
        frozen.eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
    policy = PolicyWithValue(lm).to(device)
    opt = torch.optim.AdamW(
        param_groups(policy.named_parameters(), pc.weight_decay), lr=pc.lr, betas=(0.9, 0.95)
    )
    messages = prompt_pool(cfg.data, pc.prompt_sources, cfg.sft.system_prompt)
    pool = [prompt_ids(tok, m, pc.max_prompt_len) for m in messages]
    norm = ScoreNorm(pc.normalize_score)
    kl_coef = pc.kl_coef
    start = 0
    slope = 0.0
    state = load_train_state(out_dir / "last")
    if state is not None:  # resume: weights, value head, optimizer, controller and normaliser state
        load_state_dict_verified(policy.lm, out_dir / "last")
        policy.value_head.load_state_dict(state["value_head"])
        opt.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"])
        start, kl_coef = int(state["iteration"]), float(state["kl_coef"])
        norm = ScoreNorm(pc.normalize_score, state["score_mean"], state["score_std"])
        slope = float(state.get("length_slope", 0.0))
        log(f"ppo: resuming at iteration {start}")
    elif pc.length_debias:
        # Prompts apart from iteration 0's draw (another seed), sampled from the SFT policy before any update.
        fit_prompts = batch_prompts(pool, 0, pc.debias_prompts, pc.seed + 1)
        gen = torch.Generator(device=device).manual_seed(pc.seed * 1_000_003 - 1)
        slope = fit_length_slope(lm, rm, tok, fit_prompts, pc, gen)
        log(f"ppo: RM length preference {slope:+.5f}/reply token ({len(fit_prompts)} SFT replies): removed")
    metrics = MetricsLog(out_dir / "metrics.jsonl")
    if state is None:
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    else:
        metrics.truncate_after(start)
    log(f"ppo: policy {init}, reward model {rm_path}; {len(pool)} prompts, {pc.iterations} iterations")

    def save(iteration: int) -> None:
        train_state = {
            "iteration": iteration,
            "value_head": {k: v.detach().cpu() for k, v in policy.value_head.state_dict().items()},
            "optimizer": opt.state_dict(),
            "rng": capture_rng_state(),
            "kl_coef": kl_coef,
            "score_mean": norm.mean,
            "score_std": norm.std,
            "length_slope": slope,
        }
        config = {
            "family": "decoder_lm",
            "model": dataclasses.asdict(policy.lm.cfg),
            "ppo": dataclasses.asdict(pc),
        }
        save_checkpoint(out_dir / "last", policy.lm, config, tok, train_state=train_state)

    history: list[dict[str, float]] = []
    t_start = time.perf_counter()
    for it in range(start, pc.iterations):
        t0 = time.perf_counter()
        gen = torch.Generator(device=device).manual_seed(pc.seed * 1_000_003 + it)
        policy.eval()
        prompts = batch_prompts(pool, it, pc.rollout_batch, pc.seed)
        ro = make_rollout(policy, ref, rm, tok, prompts, pc, kl_coef, norm, gen, slope)
        upd = ppo_update(policy, opt, ro, pc, torch.Generator().manual_seed(pc.seed + it))
        record = {"step": it + 1, **ro.stats, **upd, "kl_coef": kl_coef, "sec": time.perf_counter() - t0}
        kl_coef = adapt_kl(kl_coef, ro.stats["kl"], pc.kl_target)
        metrics.log(record)
        history.append(record)
        if pc.log_every and (it + 1) % pc.log_every == 0:
            r = record
            log(
                f"ppo {it + 1}/{pc.iterations}: rm {r['rm_score']:+.3f} kl {r['kl']:.3f} "
                f"ent {r['entropy']:.2f} clip {r['clip_frac']:.3f} len {r['reply_len']:.1f} "
                f"eos {r['eos_rate']:.2f} rep {r['repetition']:.2f} ({r['sec']:.0f}s)"
            )
        if pc.save_every and (it + 1) % pc.save_every == 0 and it + 1 < pc.iterations:
            save(it + 1)
    save(pc.iterations)
    metrics.close()
    plot_curves(out_dir / "metrics.jsonl", out_dir / "curves.png")
    rec = [r for r in read_metrics(out_dir / "metrics.jsonl") if "rm_score" in r]
    k = max(1, min(5, len(rec) // 2))

    def avg(rows: list[dict[str, Any]], key: str) -> float:
        vals = [r[key] for r in rows if key in r]  # a run resumed from an older version may lack a key
        return sum(vals) / len(vals) if vals else math.nan

    figures = {
        "init_from": str(init),
        "reward_from": str(rm_path),
        "iterations": pc.iterations,
        f"rm_score_first{k}": avg(rec[:k], "rm_score"),
        f"rm_score_last{k}": avg(rec[-k:], "rm_score"),
        f"kl_last{k}": avg(rec[-k:], "kl"),
        f"reply_len_first{k}": avg(rec[:k], "reply_len"),
        f"reply_len_last{k}": avg(rec[-k:], "reply_len"),
        f"eos_rate_last{k}": avg(rec[-k:], "eos_rate"),
        f"repetition_last{k}": avg(rec[-k:], "repetition"),
        "final_kl_coef": kl_coef,
        "length_slope_removed": slope,
        f"rm_score_length_debiased_first{k}": avg(rec[:k], "rm_score_length_debiased"),
        f"rm_score_length_debiased_last{k}": avg(rec[-k:], "rm_score_length_debiased"),
        "seconds_this_run": round(time.perf_counter() - t_start, 1),
    }
    mark_done(cfg, "ppo", figures)
    return figures
